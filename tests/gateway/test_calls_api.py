"""fairmeter's read API over call records: ``GET /fairmeter/v1/calls`` and ``GET /fairmeter/v1/calls/{id}``."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest
from tests.conftest import Gw

from fairmeter.money import to_nano

PROMPT = [{"role": "user", "content": "Say something about prime numbers."}]

DOCUMENTED_FIELDS = {
    "id",
    "provider",
    "api",
    "model",
    "stream",
    "status",
    "upstream_status",
    "usage_status",
    "input_tokens",
    "uncached_input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "web_search_requests",
    "cost_usd",
    "billed_usd",
    "estimated",
    "cost_breakdown_usd",
    "reserved_usd",
    "unit_prices",
    "price_source",
    "idempotency_key",
    "needs_reconciliation",
    "started_at",
    "ended_at",
}
TOKEN_FIELDS = sorted(f for f in DOCUMENTED_FIELDS if f.endswith("_tokens") or f == "web_search_requests")


def get(gw: Gw, path: str, secret: str | None, **params: object) -> tuple[int, dict[str, str], Any]:
    """A raw GET on the gateway; returns (status, lower-cased headers, decoded JSON)."""
    query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
    conn = http.client.HTTPConnection("127.0.0.1", gw.server.port, timeout=10)
    headers = {} if secret is None else {"authorization": f"Bearer {secret}"}
    try:
        conn.request("GET", path + ("?" + query if query else ""), headers=headers)
        resp = conn.getresponse()
        body = json.loads(resp.read())
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def decimal_string(value: object) -> Decimal:
    """A money amount must be a plain decimal string (never a JSON number, never exponent notation)."""
    assert isinstance(value, str), f"{value!r} is not a string"
    assert "e" not in value.lower() and value.strip() == value
    return Decimal(value)


@pytest.fixture
def sdk(gateway: Gw) -> Iterator[list[openai.OpenAI | anthropic.Anthropic]]:
    made: list[openai.OpenAI | anthropic.Anthropic] = []
    yield made
    for client in made:
        client.close()


def oai(gw: Gw, secret: str, made: list[openai.OpenAI | anthropic.Anthropic]) -> openai.OpenAI:
    client = openai.OpenAI(base_url=gw.openai_base_url, api_key=secret, max_retries=0)
    made.append(client)
    return client


def ant(gw: Gw, secret: str, made: list[openai.OpenAI | anthropic.Anthropic]) -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=gw.origin, api_key=secret, max_retries=0)
    made.append(client)
    return client


def chat_call(gw: Gw, secret: str, made: list[Any], **kw: Any) -> str:
    """One chat call through the SDK; returns its fairmeter call id."""
    raw = oai(gw, secret, made).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=PROMPT, max_tokens=40, **kw
    )
    raw.parse()
    return raw.headers["fairmeter-call-id"]


def bad_call(gw: Gw, secret: str, made: list[Any]) -> str:
    """One refused call (max_tokens=0); returns its fairmeter call id."""
    with pytest.raises(openai.BadRequestError) as info:
        oai(gw, secret, made).chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=0)  # type: ignore[arg-type]
    return info.value.response.headers["fairmeter-call-id"]


# ---------------------------------------------------------------------------------------------- one call


def test_call_record_has_every_documented_field(gateway: Gw, sdk: list[Any]) -> None:
    key_id, secret = gateway.key()
    raw = oai(gateway, secret, sdk).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=PROMPT,
        max_tokens=40,
        extra_headers={"Idempotency-Key": "idem-fields-1"},
    )
    completion = raw.parse()
    call_id = raw.headers["fairmeter-call-id"]
    status, _, call = get(gateway, f"/fairmeter/v1/calls/{call_id}", secret)
    assert status == 200
    missing = DOCUMENTED_FIELDS - set(call)
    assert not missing, f"missing fields: {sorted(missing)}"
    assert call["id"] == call_id
    assert call["provider"] == "openai" and call["api"] == "chat" and call["model"] == "gpt-4o-mini"
    assert call["stream"] is False and call["status"] == "ok" and call["upstream_status"] == 200
    assert call["usage_status"] == "complete" and call["estimated"] is False
    assert call["needs_reconciliation"] is False
    assert call["idempotency_key"] == "idem-fields-1"
    assert completion.usage is not None
    assert call["input_tokens"] == completion.usage.prompt_tokens
    assert call["output_tokens"] == completion.usage.completion_tokens
    for name in TOKEN_FIELDS:
        assert isinstance(call[name], int) and not isinstance(call[name], bool), name
    # Money: decimal strings, exact.
    cost = decimal_string(call["cost_usd"])
    billed = decimal_string(call["billed_usd"])
    reserved = decimal_string(call["reserved_usd"])
    breakdown = {k: decimal_string(v) for k, v in call["cost_breakdown_usd"].items()}
    assert breakdown and set(breakdown) <= {"input", "output", "cache_read", "cache_write_5m", "cache_write_1h"}
    assert sum(breakdown.values()) == cost
    # gpt-4o-mini's rates are whole nano-dollars per token, so the exact cost is already rounded.
    assert sum(breakdown.values()) == billed
    assert to_nano(cost) == billed * 10**9
    assert 0 < billed <= reserved
    assert gateway.store.key_spend(key_id) == (int(billed * 10**9), 0)
    assert {k: decimal_string(v) for k, v in call["unit_prices"].items() if k != "long_context"}["input"] == Decimal(
        "0.15"
    )
    assert isinstance(call["price_source"], str) and call["price_source"]
    started = datetime.fromisoformat(call["started_at"].replace("Z", "+00:00"))
    ended = datetime.fromisoformat(call["ended_at"].replace("Z", "+00:00"))
    assert started.tzinfo is not None and started <= ended
    assert abs(started.timestamp() - time.time()) < 60


def test_api_record_equals_the_stored_record(gateway: Gw, sdk: list[Any]) -> None:
    _, secret = gateway.key()
    ids = [chat_call(gateway, secret, sdk), bad_call(gateway, secret, sdk)]
    for call_id in ids:
        status, _, call = get(gateway, f"/fairmeter/v1/calls/{call_id}", secret)
        assert status == 200 and call == gateway.call(call_id)


def test_stream_and_anthropic_records(gateway: Gw, sdk: list[Any]) -> None:
    _, secret = gateway.key()
    with ant(gateway, secret, sdk).messages.with_streaming_response.create(
        model="claude-haiku-4-5",
        max_tokens=40,
        messages=PROMPT,
        stream=True,  # type: ignore[arg-type]
    ) as resp:
        call_id = resp.headers["fairmeter-call-id"]
        for _ in resp.iter_lines():
            pass
    status, _, call = get(gateway, f"/fairmeter/v1/calls/{call_id}", secret)
    assert status == 200
    assert call["provider"] == "anthropic" and call["api"] == "messages" and call["stream"] is True
    assert call["status"] == "ok" and call["usage_status"] == "complete"
    assert sum(decimal_string(v) for v in call["cost_breakdown_usd"].values()) == decimal_string(call["billed_usd"])


def test_refused_call_record(gateway: Gw, sdk: list[Any]) -> None:
    _, secret = gateway.key()
    call_id = bad_call(gateway, secret, sdk)
    status, _, call = get(gateway, f"/fairmeter/v1/calls/{call_id}", secret)
    assert status == 200
    assert set(call) >= DOCUMENTED_FIELDS
    assert call["status"] == "bad_request" and call["upstream_status"] is None
    assert call["billed_usd"] == "0" and call["cost_usd"] is None and call["cost_breakdown_usd"] == {}
    assert call["ended_at"] is not None


def test_unknown_call_id_is_404(gateway: Gw) -> None:
    _, secret = gateway.key()
    status, headers, body = get(gateway, "/fairmeter/v1/calls/call_doesnotexist", secret)
    assert status == 404 and body["error"]["code"] == "not_found"
    assert body["error"]["message"].endswith(".")
    assert headers["x-should-retry"] == "false"


def test_api_needs_a_key(gateway: Gw, sdk: list[Any]) -> None:
    _, secret = gateway.key()
    call_id = chat_call(gateway, secret, sdk)
    for path in ("/fairmeter/v1/calls", f"/fairmeter/v1/calls/{call_id}"):
        status, _, body = get(gateway, path, None)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        status, _, body = get(gateway, path, "fm-notAKey")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"


def test_reading_the_api_records_no_calls(gateway: Gw, sdk: list[Any]) -> None:
    _, secret = gateway.key()
    chat_call(gateway, secret, sdk)
    get(gateway, "/fairmeter/v1/calls", secret)
    get(gateway, "/fairmeter/v1/calls/call_nope", secret)
    assert len(gateway.calls()) == 1


# ---------------------------------------------------------------------------------------------- listing


def walk(gw: Gw, secret: str, **params: object) -> list[list[dict[str, Any]]]:
    """Every page of a listing, following ``next`` until it is null."""
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    for _ in range(1000):
        extra = dict(params) if cursor is None else {**params, "cursor": cursor}
        status, _, body = get(gw, "/fairmeter/v1/calls", secret, **extra)
        assert status == 200, body
        assert set(body) == {"data", "next"}
        pages.append(body["data"])
        cursor = body["next"]
        if cursor is None:
            return pages
        assert isinstance(cursor, str) and cursor
    raise AssertionError("pagination never ended")


def test_pagination_visits_every_call_exactly_once(gateway: Gw, sdk: list[Any]) -> None:
    _, secret = gateway.key()
    made = []
    for i in range(9):
        made.append(bad_call(gateway, secret, sdk) if i % 3 == 0 else chat_call(gateway, secret, sdk))
    for limit in (1, 2, 4, 9, 10):
        pages = walk(gateway, secret, limit=limit)
        assert all(1 <= len(p) <= limit for p in pages)
        ids = [c["id"] for p in pages for c in p]
        assert sorted(ids) == sorted(made), f"limit={limit}"
        assert len(ids) == len(set(ids))
        assert len(pages) == -(-len(made) // limit)
        starts = [c["started_at"] for p in pages for c in p]
        assert starts == sorted(starts, reverse=True), "newest first"
    assert [c["id"] for c in walk(gateway, secret)[0]] == made[::-1]


def test_limit_must_be_1_to_1000(gateway: Gw) -> None:
    _, secret = gateway.key()
    for bad in (1001, 0, -1, "abc", "1.5"):
        status, headers, body = get(gateway, "/fairmeter/v1/calls", secret, limit=bad)
        assert status == 400, bad
        assert body["error"]["code"] == "invalid_request" and body["error"]["param"] == "limit"
        assert body["error"]["message"].endswith(".")
        assert headers["x-should-retry"] == "false"
    assert "1001" in get(gateway, "/fairmeter/v1/calls", secret, limit=1001)[2]["error"]["message"]
    assert get(gateway, "/fairmeter/v1/calls", secret, limit=1000)[0] == 200


def test_bad_filters_are_refused(gateway: Gw) -> None:
    _, secret = gateway.key()
    for params, param in (
        ({"status": "exploded"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-45"}, "until"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "bm90LWEtY3Vyc29y"}, "cursor"),  # base64 of "not-a-cursor": no separator
    ):
        status, _, body = get(gateway, "/fairmeter/v1/calls", secret, **params)
        assert status == 400, params
        assert body["error"]["param"] == param and body["error"]["code"] == "invalid_request"


def test_status_filter(gateway: Gw, sdk: list[Any]) -> None:
    _, secret = gateway.key()
    ok = {chat_call(gateway, secret, sdk) for _ in range(3)}
    bad = {bad_call(gateway, secret, sdk) for _ in range(2)}
    assert {c["id"] for p in walk(gateway, secret, status="ok") for c in p} == ok
    assert {c["id"] for p in walk(gateway, secret, status="bad_request") for c in p} == bad
    assert walk(gateway, secret, status="refused") == [[]]
    two = walk(gateway, secret, status="ok", limit=2)
    assert len(two) == 2 and {c["id"] for p in two for c in p} == ok


def test_since_and_until_filters(gateway: Gw, sdk: list[Any]) -> None:
    _, secret = gateway.key()
    before = {chat_call(gateway, secret, sdk), bad_call(gateway, secret, sdk)}
    time.sleep(0.05)
    cut = time.time()
    time.sleep(0.05)
    after = {chat_call(gateway, secret, sdk), bad_call(gateway, secret, sdk), chat_call(gateway, secret, sdk)}
    iso_cut = datetime.fromtimestamp(cut, tz=UTC).isoformat().replace("+00:00", "Z")
    for since in (repr(cut), iso_cut):
        assert {c["id"] for p in walk(gateway, secret, since=since) for c in p} == after
        assert {c["id"] for p in walk(gateway, secret, since=since, limit=1) for c in p} == after
    for until in (repr(cut), iso_cut):
        assert {c["id"] for p in walk(gateway, secret, until=until) for c in p} == before
    window = walk(gateway, secret, since=repr(cut), until=repr(time.time() + 60), status="bad_request")
    assert {c["id"] for p in window for c in p} == after & {
        c["id"] for c in gateway.calls() if c["status"] == "bad_request"
    }
    assert walk(gateway, secret, since=repr(time.time() + 60)) == [[]]


def test_a_time_without_a_zone_is_utc_whatever_the_servers_zone(
    gateway: Gw, sdk: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calls API reads times as the admin API and the commands do: a naive ISO-8601 time is UTC."""
    _, secret = gateway.key()
    before = {chat_call(gateway, secret, sdk)}
    time.sleep(0.05)
    cut = time.time()
    time.sleep(0.05)
    after = {chat_call(gateway, secret, sdk)}
    naive = datetime.fromtimestamp(cut, tz=UTC).replace(tzinfo=None).isoformat()
    monkeypatch.setenv("TZ", "America/New_York")  # the gateway runs in this process: its local zone moves too
    time.tzset()
    try:
        assert {c["id"] for p in walk(gateway, secret, since=naive) for c in p} == after
        assert {c["id"] for p in walk(gateway, secret, until=naive) for c in p} == before
    finally:
        monkeypatch.undo()
        time.tzset()


# ---------------------------------------------------------------------------------------------- who sees what


def test_a_key_sees_only_its_own_calls_and_an_admin_sees_all(gateway: Gw, sdk: list[Any]) -> None:
    _, alice = gateway.key(name="alice")
    _, bob = gateway.key(name="bob")
    _, admin = gateway.key(name="ops", admin=True)
    alice_calls = {chat_call(gateway, alice, sdk), bad_call(gateway, alice, sdk)}
    bob_calls = {chat_call(gateway, bob, sdk)}
    assert {c["id"] for p in walk(gateway, alice) for c in p} == alice_calls
    assert {c["id"] for p in walk(gateway, bob) for c in p} == bob_calls
    assert {c["id"] for p in walk(gateway, admin) for c in p} == alice_calls | bob_calls
    assert {c["id"] for p in walk(gateway, alice, limit=1) for c in p} == alice_calls
    for call_id in alice_calls:
        assert get(gateway, f"/fairmeter/v1/calls/{call_id}", alice)[0] == 200
        status, _, body = get(gateway, f"/fairmeter/v1/calls/{call_id}", bob)
        assert status == 404 and body["error"]["code"] == "not_found"
        assert call_id not in json.dumps(body), "a 404 must not confirm another key's call"
        status, _, body = get(gateway, f"/fairmeter/v1/calls/{call_id}", admin)
        assert status == 200 and body["id"] == call_id
    (bob_call,) = bob_calls
    assert get(gateway, f"/fairmeter/v1/calls/{bob_call}", alice)[0] == 404


def test_a_revoked_key_cannot_read_its_calls(gateway: Gw, sdk: list[Any]) -> None:
    key_id, secret = gateway.key()
    call_id = chat_call(gateway, secret, sdk)
    assert gateway.store.revoke_key(key_id, time.time())
    deadline = time.monotonic() + 3
    while get(gateway, f"/fairmeter/v1/calls/{call_id}", secret)[0] != 401:
        assert time.monotonic() < deadline, "a revoked key still reads the API"
        time.sleep(0.05)


def test_unknown_api_routes_are_404_and_other_methods_405(gateway: Gw) -> None:
    _, secret = gateway.key()
    status, _, body = get(gateway, "/fairmeter/v1/nothing", secret)
    assert status == 404 and body["error"]["code"] == "not_found"
    for method, path, want in [
        ("DELETE", "/fairmeter/v1/calls", 405),
        ("POST", "/fairmeter/v1/limits", 405),
        ("PUT", "/fairmeter/v1/calls/call_x/explain", 405),
        ("POST", "/fairmeter/v1/nothing", 404),
    ]:
        conn = http.client.HTTPConnection("127.0.0.1", gateway.server.port, timeout=10)
        try:
            conn.request(method, path, headers={"authorization": f"Bearer {secret}"})
            resp = conn.getresponse()
            err = json.loads(resp.read())["error"]
            assert resp.status == want, (method, path)
            assert err["code"] == ("method_not_allowed" if want == 405 else "not_found")
            assert resp.getheader("allow") == ("GET" if want == 405 else None)
            if want == 405:
                assert err["message"] == f"{path} takes GET, not {method}."
        finally:
            conn.close()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_non_finite_times_are_refused(gateway: Gw, sdk: list[Any], value: str) -> None:
    _, secret = gateway.key()
    chat_call(gateway, secret, sdk)
    for name in ("since", "until"):
        status, _, body = get(gateway, "/fairmeter/v1/calls", secret, **{name: value})
        assert status == 400, f"{name}={value} answered {status} {body}"
        assert body["error"]["param"] == name


@pytest.mark.parametrize("stream", [False, True])
def test_the_settlement_follows_the_response_and_the_api_waits_for_it(
    gateway: Gw, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """The client gets its answer before the ledger commits it; this process's API never shows it unsettled."""
    from fairmeter.store import batch

    monkeypatch.setattr(batch, "RIDE_S", 1.0)  # the settlement rides this long when no other call comes
    key_id, secret = gateway.key()
    client = openai.OpenAI(base_url=gateway.openai_base_url, api_key=secret, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=PROMPT,
        max_tokens=20,
        stream=stream,  # type: ignore[call-overload]
    )
    if stream:
        list(raw.parse())  # the whole stream, to its end
    else:
        assert raw.parse().choices[0].message.content
    call_id = raw.headers["fairmeter-call-id"]
    assert gateway.store.get_call(call_id)["status"] == "pending"  # the answer came first
    status, _, record = get(gateway, f"/fairmeter/v1/calls/{call_id}", secret)
    assert status == 200 and record["status"] == "ok" and Decimal(record["billed_usd"]) > 0
    assert gateway.store.key_spend(key_id) == (to_nano(Decimal(record["billed_usd"])), 0)
