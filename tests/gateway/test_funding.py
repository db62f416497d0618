"""Who pays, through the real gateway with the official SDKs: windows, spill, refusals, /limits, /explain."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import anthropic
import openai
import pytest
from tests.conftest import Gw

from fairmeter.money import parse_usd, to_nano
from fairmeter.store import admin_sql

PLAN = {
    "name": "pro",
    "windows": [
        {"name": "5h", "kind": "block", "hours": 5, "limit_usd": "0.0003"},
        {"name": "weekly", "kind": "weekly", "anchor": "monday 09:00", "limit_usd": "0.01"},
    ],
}
PROMPT = [{"role": "user", "content": "Say something about prime numbers."}]


def admin(gw: Gw, op: Any) -> Any:
    return gw.store.run(lambda store: store.run(op))


def subscriber(gw: Gw, spill: bool = False) -> tuple[str, str]:
    """A payer on the pro plan and a key of its organisation; returns (payer id, secret)."""
    now = time.time()
    admin(gw, lambda tx: admin_sql.create_org(tx, "acme", "test", now))
    admin(gw, lambda tx: admin_sql.put_plan(tx, dict(PLAN), "test", now))
    payer = admin(gw, lambda tx: admin_sql.create_payer(tx, "acme", None, "pro", {"spill_to_credits": spill}, "t", now))
    key_id, secret = gw.key()
    admin(gw, lambda tx: admin_sql.assign_key(tx, key_id, "acme", None, "svc", "test", now))
    return payer["id"], secret


def get(gw: Gw, path: str, secret: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", gw.server.port, timeout=10)
    conn.request("GET", path, headers={"authorization": f"Bearer {secret}"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 200, body
    return body


def client(gw: Gw, secret: str) -> openai.OpenAI:
    c = openai.OpenAI(base_url=gw.openai_base_url, api_key=secret, max_retries=0)
    gw.clients.append(c)
    return c


def nano(text: str) -> int:
    return to_nano(parse_usd(text))


def test_the_subscription_pays_until_its_window_is_full_then_402_with_the_reset(gateway: Gw) -> None:
    _, secret = subscriber(gateway)
    oa = client(gateway, secret)
    paid_calls = 0
    while True:
        try:
            resp = oa.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=60)
        except openai.APIStatusError as err:
            refusal = err
            break
        call_id = resp.headers["fairmeter-call-id"]
        why = get(gateway, f"/fairmeter/v1/calls/{call_id}/explain", secret)
        assert [p["bucket"] for p in why["paid"]] == ["subscription"]
        assert why["sentence"].startswith(f"Paid ${why['billed_usd']}"[:8])
        assert "credits untouched because the subscription had room" in why["sentence"]
        paid_calls += 1
        assert paid_calls < 50
    assert paid_calls >= 2
    assert refusal.status_code == 402
    assert refusal.response.headers["x-should-retry"] == "false"
    assert "retry-after" not in refusal.response.headers
    body = refusal.response.json()["error"]
    assert body["code"] == "allowance_exhausted"
    window = get(gateway, "/fairmeter/v1/limits", secret)["windows"][0]
    assert body["message"].startswith("This call needs a hold of $")
    assert f"5-hour allowance has ${window['remaining']} left" in body["message"] or (
        window["remaining"] == "0" and "5-hour allowance used up" in body["message"]
    )
    assert "pay-as-you-go credits are off for this account" in body["message"]
    assert "resets " in body["message"] and " UTC" in body["message"]
    numbers = body["allowance_exhausted"]  # the same, for programs
    assert numbers["window"]["name"] == "5h" and numbers["window"]["limit"] == "0.0003"
    assert numbers["window"]["resets_at"] == window["resets_at"]
    assert nano(numbers["window"]["remaining"]) < nano(numbers["hold_usd"])
    assert "pay-as-you-go credits are off for this account" in numbers["blocked"]
    record = gateway.call(refusal.response.headers["fairmeter-call-id"])
    assert record["status"] == "refused" and record["billed_usd"] == "0"


def test_limits_agree_with_what_the_next_call_does(gateway: Gw) -> None:
    """Each call is refused exactly when its hold is larger than the room /limits reported just before."""
    _, secret = subscriber(gateway)
    oa = client(gateway, secret)
    for max_tokens in (200, 90, 400, 30, 150, 60, 300, 10, 1, 5):
        before = get(gateway, "/fairmeter/v1/limits", secret)
        room = min(nano(str(w["remaining"])) for w in before["windows"])
        try:
            resp = oa.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=PROMPT, max_tokens=max_tokens
            )
            call_id, ok = resp.headers["fairmeter-call-id"], True
        except openai.APIStatusError as err:
            assert err.status_code == 402
            call_id, ok = err.response.headers["fairmeter-call-id"], False
        hold = nano(gateway.call(call_id)["reserved_usd"])
        assert ok == (hold <= room), (max_tokens, hold, room)
        if ok:
            why = get(gateway, f"/fairmeter/v1/calls/{call_id}/explain", secret)
            assert [p["bucket"] for p in why["paid"]] in (["subscription"], [])


def test_a_smaller_max_tokens_that_would_fit_is_named_and_does_fit(gateway: Gw) -> None:
    _, secret = subscriber(gateway)
    oa = client(gateway, secret)
    with pytest.raises(openai.APIStatusError) as err:
        oa.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=5000)
    message = err.value.response.json()["error"]["message"]
    assert "A request with max_tokens of at most " in message
    fitting = int(message.rsplit("at most ", 1)[1].split(" ")[0])
    resp = oa.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=fitting)
    assert resp.choices[0].message.content
    with pytest.raises(openai.APIStatusError):  # and one more token would not have (the room is now smaller still)
        oa.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=fitting + 1)


def test_with_spill_on_the_grant_burns_before_purchased_credits(gateway: Gw) -> None:
    payer, secret = subscriber(gateway, spill=True)
    now = time.time()
    grant = admin(gateway, lambda tx: admin_sql.add_grant(tx, payer, nano("0.0002"), "sorry for the outage", "t", now))
    admin(gateway, lambda tx: admin_sql.topup(tx, payer, nano("1"), "inv-1", "t", now))
    ant = anthropic.Anthropic(base_url=gateway.origin, api_key=secret, max_retries=0)
    gateway.clients.append(ant)
    order: list[list[str]] = []
    for _ in range(12):
        resp = ant.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=60, messages=PROMPT)
        why = get(gateway, f"/fairmeter/v1/calls/{resp.headers['fairmeter-call-id']}/explain", secret)
        order.append([p["source"] for p in why["paid"]])
    flat = [s for call in order for s in call]
    assert "subscription" in flat and grant["id"] in flat and "credits" in flat
    assert flat.index("subscription") < flat.index(grant["id"]) < flat.index("credits")
    spill_sentence = next(
        get(gateway, f"/fairmeter/v1/calls/{c['id']}/explain", secret)["sentence"]
        for c in gateway.calls()
        if "credits" in [p["source"] for p in get(gateway, f"/fairmeter/v1/calls/{c['id']}/explain", secret)["paid"]]
    )
    assert "purchased credits" in spill_sentence
    limits = get(gateway, "/fairmeter/v1/limits", secret)
    assert limits["grants"][0]["remaining_usd"] == "0"
    assert nano(limits["credits"]["remaining_usd"]) < nano("1")
