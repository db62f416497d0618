"""Several real `fairmeter serve` processes on one PostgreSQL database, driven by the official SDKs.

1. Exactness: 4 replicas, 1,000 calls in flight at once against one payer's 5-hour window and two keys'
   spend caps. Nothing passes a cap or the window, every refusal is one whose hold did not fit the room
   it states, every hold is resolved, and the books verify.
2. Crash: a replica is killed with SIGKILL mid-stream; the other one resolves the lapsed hold, once.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx2 as httpx
import openai
import pytest
from tests.serve_process import EXE, ServeProcess, start_all, stop_all, write_config

from fairmeter.money import parse_usd, to_nano
from fairmeter.store import Store, admin_sql, open_store
from fairmeter.store.protocol import CallPage
from fairmeter.store.records import DEFAULT_PAYER, CallEnd
from fairmeter.testing import EmulatorServer

pytest_plugins = ("tests.pg",)

T = TypeVar("T")
REPLICAS = 4
CALLS = 1_000
# Every call generates its whole max_tokens, so it costs 75-95 % of its hold: the window is filled by real
# spend, and a hold let through past the limit would show as spend past it.
MAX_TOKENS = (100, 200, 400, 800)
LIMIT_USD = "0.015"  # the 5-hour window: room for ~60 such calls, ~55 holds at once
CAP_USD = ("0.004", "0.03")  # key 0 reaches its cap well before the window fills; key 1 never reaches its own
EMULATE = {"x-emulator-latency-ms": "300", "x-emulator-chunks": "1000", "x-emulator-tag": "replicas"}
PROMPT = [{"role": "user", "content": "Say something about prime numbers."}]
PLAN = {"name": "team", "windows": [{"name": "5h", "kind": "block", "hours": 5, "limit_usd": LIMIT_USD}]}
HOLD = re.compile(r"^This call needs a hold of \$([0-9.]+) \(its worst-case cost\)")
ROOM = {  # the room each refusal states it saw
    "allowance_exhausted": re.compile(r"5-hour allowance (?:has \$([0-9.]+) left|used up)"),
    "budget_exceeded": re.compile(r"leaving \$([0-9.]+)\. "),
}
STOPPED = (0, -signal.SIGTERM)  # uvicorn shuts down gracefully, then re-raises the signal it caught


def nano(text: str) -> int:
    return to_nano(parse_usd(text))


def with_store(url: str, work: Callable[[Store], Awaitable[T]]) -> T:
    """``work(store)`` on a store of the test's own (not a replica's), closed afterwards."""

    async def main() -> T:
        store = open_store(url, time.time())
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(main())


def verify(url: str) -> dict[str, Any]:
    """`fairmeter verify --json` as an operator runs it, against the shared database."""
    done = subprocess.run([EXE, "verify", "--json", "--database-url", url], capture_output=True, text=True)
    assert done.stdout, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def auth(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


# ---- 1. exactness across replicas ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one SDK call got back."""

    key: int
    call_id: str
    status: int
    code: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Books:
    """The shared database after the run, read through the test's own store."""

    calls: dict[str, dict[str, Any]]
    pending: int
    spend: list[tuple[int, int]]  # (posted, pending) per key
    window: dict[str, Any]  # the 5-hour window, as /limits computes it


async def subscriber(store: Store) -> list[tuple[str, str]]:
    """An org on a plan with one 5-hour window (spill and overage off), its payer, and two capped keys."""
    now = time.time()
    await store.run(lambda tx: admin_sql.create_org(tx, "acme", "test", now))
    await store.run(lambda tx: admin_sql.put_plan(tx, dict(PLAN), "test", now))
    settings = {"spill_to_credits": False, "overage_enabled": False}
    await store.run(lambda tx: admin_sql.create_payer(tx, "acme", None, "team", settings, "test", now))
    keys = []
    for n, cap in enumerate(CAP_USD):
        key, secret = await store.create_key(f"svc{n}", nano(cap), False, now)
        await store.run(lambda tx, k=key.id, n=n: admin_sql.assign_key(tx, k, "acme", None, f"svc{n}", "test", now))
        keys.append((key.id, secret))
    return keys


async def flood(procs: list[ServeProcess], secrets: list[str]) -> list[Outcome]:
    """CALLS calls at once, round-robin over the replicas, alternating keys; one HTTP client per replica.

    The clients' pools admit every call at once (an httpx2 client's default pool queues all but 100).
    """
    limits = httpx.Limits(max_connections=CALLS, max_keepalive_connections=CALLS)
    https = [httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60)) for _ in procs]
    clients = [
        [openai.AsyncOpenAI(base_url=p.origin + "/v1", api_key=s, max_retries=0, http_client=h) for s in secrets]
        for p, h in zip(procs, https, strict=True)
    ]

    async def one(n: int) -> Outcome:
        key = (n // len(procs)) % len(secrets)
        client = clients[n % len(procs)][key]
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=PROMPT, max_tokens=MAX_TOKENS[n % len(MAX_TOKENS)], extra_headers=EMULATE
            )
        except openai.APIStatusError as err:
            body = err.response.json()["error"]
            return Outcome(
                key, err.response.headers["fairmeter-call-id"], err.status_code, body["code"], body["message"]
            )
        assert raw.parse().choices[0].message.content
        return Outcome(key, raw.headers["fairmeter-call-id"], raw.status_code)

    try:
        return list(await asyncio.gather(*(one(n) for n in range(CALLS))))
    finally:
        for h in https:
            await h.aclose()


def books_of(url: str, keys: list[tuple[str, str]]) -> Books:
    async def read(store: Store) -> Books:
        rows = await store.list_calls(CallPage(limit=10 * CALLS))
        payer = await store.run(lambda tx: admin_sql.payer_of_key(tx, keys[0][0]))
        now = time.time()
        window = (await store.run(lambda tx: admin_sql.limits(tx, payer, now)))["windows"][0]
        spend = [await store.key_spend(k) for k, _ in keys]
        return Books({r["id"]: r for r in rows}, await store.pending_count(), spend, window)

    return with_store(url, read)


def check_refusals(refused: list[Outcome], calls: dict[str, dict[str, Any]]) -> None:
    """Each 402 states the room it saw, and the call's hold (its record's, and its message's) was larger."""
    for r in refused:
        assert r.status == 402 and r.code in ROOM and r.message is not None, r
        stated_hold, room = HOLD.match(r.message), ROOM[r.code].search(r.message)
        assert stated_hold and room, r.message
        record = calls[r.call_id]
        assert record["status"] == "refused" and record["billed_nano"] == 0
        assert record["reserved_nano"] == nano(stated_hold.group(1))
        assert nano(room.group(1) or "0") < record["reserved_nano"], r.message


def limits_seen(proc: ServeProcess, secret: str) -> dict[str, Any]:
    resp = httpx.get(proc.origin + "/fairmeter/v1/limits", headers=auth(secret), timeout=30)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def explanations(proc: ServeProcess, secrets: list[str], paid: list[Outcome]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=proc.origin, timeout=60) as http:

        async def explain(o: Outcome) -> dict[str, Any]:
            resp = await http.get(f"/fairmeter/v1/calls/{o.call_id}/explain", headers=auth(secrets[o.key]))
            assert resp.status_code == 200, resp.text
            body: dict[str, Any] = resp.json()
            return body

        return list(await asyncio.gather(*(explain(o) for o in paid)))


def check_run(procs: list[ServeProcess], keys: list[tuple[str, str]], outcomes: list[Outcome], books: Books) -> None:
    secrets = [s for _, s in keys]
    paid = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status != 200]
    codes = Counter(o.code for o in refused)
    assert paid and set(codes) == set(ROOM), codes  # meaningful: calls paid, the window and a cap both refused
    assert len(books.calls) == CALLS and books.pending == 0  # every call has its record; no hold is left
    check_refusals(refused, books.calls)
    for o in paid:
        record = books.calls[o.call_id]
        assert record["status"] == "ok" and 0 < record["billed_nano"] <= record["reserved_nano"]
    billed = [sum(books.calls[o.call_id]["billed_nano"] for o in paid if o.key == k) for k in range(len(keys))]
    # exact totals, never past the window or a cap, as the store and every replica's /limits say
    window = books.window
    assert nano(window["used"]) == sum(billed) <= nano(LIMIT_USD) and window["held"] == "0", window
    for k, cap in enumerate(CAP_USD):
        assert books.spend[k] == (billed[k], 0) and billed[k] <= nano(cap)
        seen = limits_seen(procs[k % len(procs)], secrets[k])
        assert nano(seen["key"]["cap_usd"]) == nano(cap) and nano(seen["key"]["spent_usd"]) == billed[k]
        assert seen["windows"][0]["used"] == window["used"] and seen["windows"][0]["held"] == "0"
    for why in asyncio.run(explanations(procs[-1], secrets, paid)):
        assert [p["bucket"] for p in why["paid"]] == ["subscription"], why
        assert "from the 5-hour window" in why["sentence"], why


@pytest.mark.postgres
def test_replicas_never_pass_a_cap_and_refuse_only_what_does_not_fit(
    pg_url: str, emulator: EmulatorServer, tmp_path: Path
) -> None:
    keys = with_store(pg_url, subscriber)
    emulator.reset()
    procs = start_all(write_config(tmp_path / "fm.toml", pg_url, emulator), tmp_path, REPLICAS)
    try:
        outcomes = asyncio.run(flood(procs, [s for _, s in keys]))
        check_run(procs, keys, outcomes, books_of(pg_url, keys))
        paid = sum(1 for o in outcomes if o.status == 200)
        assert emulator.stats()["tags"]["replicas"]["requests"] == paid  # no refused call went upstream
    finally:
        stopped = stop_all(procs)
    assert all(code in STOPPED for code in stopped), [p.log.read_text() for p in procs]
    result = verify(pg_url)
    assert result["balanced"] and result["caps_ok"] and result["pending_calls"] == 0
    assert result["problems"] == []


# ---- 2. a replica killed mid-stream ------------------------------------------------------------------


def ledger_of(url: str) -> tuple[list[Any], list[Any]]:
    async def read(store: Store) -> tuple[list[Any], list[Any]]:
        return await store.accounts(), await store.transfers()

    return with_store(url, read)


def settled(url: str, call_id: str) -> dict[str, Any]:
    """The call's record once a live replica has resolved its lapsed hold (lease 2 s, sweep every 0.2 s)."""
    deadline = time.monotonic() + 30
    while True:
        row = with_store(url, lambda store: store.get_call(call_id))
        assert row is not None
        if row["status"] != "pending":
            return row
        assert time.monotonic() < deadline, f"the lapsed hold of {call_id} was never resolved"
        time.sleep(0.1)


@pytest.mark.postgres
def test_a_killed_replicas_hold_is_resolved_once_by_the_other(
    pg_url: str, emulator: EmulatorServer, tmp_path: Path
) -> None:
    sweep_s = 0.2  # float-ok: seconds
    config = write_config(
        tmp_path / "fm.toml", pg_url, emulator, upstream_timeout_s=1, lease_margin_s=1, expiry_interval_s=sweep_s
    )
    key, secret = with_store(pg_url, lambda store: store.create_key("k", nano("1"), False, time.time()))
    a, b = start_all(config, tmp_path, 2)
    try:
        with openai.OpenAI(base_url=a.origin + "/v1", api_key=secret, max_retries=0, timeout=30) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=PROMPT, max_tokens=300, stream=True,
                extra_headers={"x-emulator-chunks": "200", "x-emulator-chunk-delay-ms": "50"},
            )  # fmt: skip
            call_id = raw.headers["fairmeter-call-id"]
            stream = raw.parse()
            chunks = iter(stream)
            assert [next(chunks).choices[0].delta.content for _ in range(4)][1:] == ["Hello", " from", " the"]
            a.kill_9()
            stream.close()
        call = settled(pg_url, call_id)
        assert call["forwarded"] == 1 and call["needs_reconciliation"] == 1 and call["estimated"] == 1
        assert call["status"] == "upstream_cut" and call["usage_status"] == "unknown"
        assert 0 < call["billed_nano"] == call["estimate_nano"] <= call["reserved_nano"]
        accounts, transfers = ledger_of(pg_url)
        mine = [t for t in transfers if t.call_id == call_id]
        spend = [t.kind.value for t in mine if t.debit_account == f"key:{key.id}"]
        funding = [(t.kind.value, t.debit_account, t.amount) for t in mine if t.credit_account == f"key:{key.id}"]
        assert spend == ["hold", "expire"]  # settled once, at its estimate
        bucket = f"overage:{DEFAULT_PAYER}"
        assert funding == [("hold", bucket, call["reserved_nano"]), ("post", bucket, call["billed_nano"])]
        result = verify(pg_url)
        assert result["balanced"] and result["caps_ok"] and result["pending_calls"] == 0
        assert [(p["kind"], p["call_id"]) for p in result["problems"]] == [("needs_reconciliation", call_id)]
        # B's sweep runs again (several times), and a second resolution is tried outright: nothing changes
        time.sleep(3 * sweep_s)
        end = CallEnd("upstream_cut", None, "unknown", None, None, call["billed_nano"], True, None, time.time(), None)
        again = with_store(pg_url, lambda store: store.finish_call(call_id, end, time.time(), expired=True))
        assert again == 0 and ledger_of(pg_url) == (accounts, transfers)
    finally:
        stopped = stop_all([a, b])
    assert stopped[0] == -signal.SIGKILL and stopped[1] in STOPPED, b.log.read_text()
