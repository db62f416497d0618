"""The behaviour every ``Store`` backend owes its callers, written against the protocol only.

Each test runs once per name in ``BACKENDS``. A backend joins by adding its name there, an opener to
``OPENERS`` (``async (url, now) -> Store``) and a way to make a fresh URL in ``backend_url``; no test
here may read a backend's tables directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import pytest

from fairmeter.ledger.model import HoldRefused, Transfer, TransferKind, TransferState
from fairmeter.ledger.verify import verify_books
from fairmeter.store.postgres import PostgresStore
from fairmeter.store.protocol import CallPage, LapsedCall, Store
from fairmeter.store.records import CallEnd, CallStart, HoldOutcome, KeyRecord, StoredResponse, call_json, hash_key
from fairmeter.store.sqlite import SQLiteStore

pytest_plugins = ("tests.pg",)

BACKENDS = ["sqlite", "postgres"]


async def _sqlite(url: str, now: float) -> Store:
    return SQLiteStore(url, now)


OPENERS: dict[str, Callable[[str, float], Awaitable[Store]]] = {"sqlite": _sqlite, "postgres": PostgresStore.open}
MARKS = {"postgres": pytest.mark.postgres}

TTL = 86_400
T = TypeVar("T")

# The columns of the `calls` table (migrations m001 and m002), in order: get_call and list_calls return these keys.
CALL_COLUMNS = [
    "id", "key_id", "provider", "api", "model", "stream", "status", "upstream_status", "usage_status",
    "usage_json", "cost_usd", "billed_nano", "reserved_nano", "estimate_nano", "estimated", "breakdown_json",
    "prices_json", "price_source", "idempotency_key", "replay_of", "needs_reconciliation", "overrun_nano",
    "hold_id", "forwarded", "lease_owner", "lease_expires_at", "error_code", "message", "started_at", "ended_at",
    "payer_id", "funding_json", "paid_json", "explanation",  # migration m002
]  # fmt: skip


@pytest.fixture(params=[pytest.param(b, marks=MARKS.get(b, ())) for b in BACKENDS])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(backend name, URL of a store of its own for this test)."""
    name: str = request.param
    if name == "postgres":
        return name, request.getfixturevalue("pg_url")
    if name == "sqlite":
        tmp = request.getfixturevalue("tmp_path")
        return name, f"sqlite:///{tmp / 'contract.db'}"
    raise AssertionError(f"no URL maker for backend {name!r}")


def run(backend: tuple[str, str], body: Callable[[Store], Awaitable[T]], now: float = 0.0) -> T:
    """Open the test's store, run ``body`` on a fresh event loop, close the store."""

    async def main() -> T:
        store = await OPENERS[backend[0]](backend[1], now)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


_seq = iter(range(1, 1_000_000))


def start(
    key: KeyRecord | str | None,
    reserved: int,
    *,
    idem: str | None = None,
    at: float = 100.0,
    owner: str = "gw-1",
    lease_until: float | None = None,
    estimate: int | None = None,
    call_id: str | None = None,
    provider: str = "openai",
) -> CallStart:
    key_id = key.id if isinstance(key, KeyRecord) else key
    return CallStart(
        id=call_id or f"call_{next(_seq):06d}",
        key_id=key_id,
        provider=provider,
        api="chat.completions",
        model="gpt-test",
        stream=False,
        reserved=reserved,
        estimate=reserved // 2 if estimate is None else estimate,
        prices_json='{"input": "1"}',
        price_source="test",
        idempotency_key=idem,
        started_at=at,
        lease_owner=owner,
        lease_expires_at=at + 30 if lease_until is None else lease_until,
    )


def end(billed: int, *, at: float = 101.0, stored: StoredResponse | None = None, **extra: Any) -> CallEnd:
    return CallEnd(
        status=extra.pop("status", "ok"),
        upstream_status=200,
        usage_status="complete",
        usage_json='{"input_tokens": 3, "output_tokens": 4}',
        cost_usd="0.000000" + str(billed),
        billed=billed,
        estimated=False,
        breakdown_json='{"input": "0.1"}',
        ended_at=at,
        stored_response=stored,
        **extra,
    )


HELD = HoldOutcome("held")


async def books_ok(store: Store) -> list[str]:
    """verify over the store's accounts and transfers: balanced and within caps; returns the problem kinds."""
    balanced, caps_ok, problems = verify_books(await store.accounts(), await store.transfers())
    assert balanced, problems
    assert caps_ok, problems
    return [p.kind for p in problems]


async def transfers_of(store: Store, call_id: str) -> list[Transfer]:
    return [t for t in await store.transfers() if t.call_id == call_id]


# ---- keys ------------------------------------------------------------------------------------


def test_keys_are_created_found_by_hash_listed_and_revoked_once(backend: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        a, secret_a = await store.create_key("alpha", 5_000, False, 10.0)
        b, secret_b = await store.create_key("beta", None, True, 20.0)
        assert secret_a.startswith("fm-") and secret_a != secret_b and a.prefix == secret_a[:7]
        assert (a.name, a.max_spend, a.admin, a.created_at, a.revoked_at) == ("alpha", 5_000, False, 10.0, None)
        assert await store.key_by_hash(hash_key(secret_a)) == a
        assert await store.key_by_hash(hash_key(secret_b)) == b
        assert await store.key_by_hash(hash_key(secret_a + "x")) is None
        assert await store.list_keys() == [a, b]
        assert await store.key_spend(a.id) == (0, 0)
        assert await store.key_spend("key_nope") == (0, 0)

        assert await store.revoke_key(a.id, 30.0) is True
        assert await store.revoke_key(a.id, 40.0) is False  # the first revocation stands
        assert await store.revoke_key("key_nope", 40.0) is False
        assert await store.key_by_hash(hash_key(secret_a)) == replace(a, revoked_at=30.0)
        assert [k.revoked_at for k in await store.list_keys()] == [30.0, None]
        # a key's account carries its cap
        caps = {acc.id: acc.cap for acc in await store.accounts()}
        assert caps == {a.account: 5_000, b.account: None}

    run(backend, body)


# ---- holds under the cap ---------------------------------------------------------------------


def test_holds_fit_under_the_cap_exactly_and_a_refusal_gives_its_numbers(backend: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        key, _ = await store.create_key("k", 1_000, False, 0.0)
        first, second = start(key, 600), start(key, 401)
        assert await store.begin_call(first, TTL) == HELD
        assert await store.key_spend(key.id) == (0, 600)

        refused = await store.begin_call(second, TTL)
        assert refused == HoldOutcome("refused", refused=HoldRefused(cap=1_000, spent=0, held=600, amount=401))
        assert await store.get_call(second.id) is None and await transfers_of(store, second.id) == []
        assert await store.key_spend(key.id) == (0, 600)

        assert await store.begin_call(start(key, 400), TTL) == HELD  # exactly at the cap
        assert await store.finish_call(first.id, end(250), 101.0) == 0
        assert await store.key_spend(key.id) == (250, 400)
        again = await store.begin_call(start(key, 351), TTL)
        assert again.refused == HoldRefused(cap=1_000, spent=250, held=400, amount=351)
        assert again.refused.room == 350
        assert await store.begin_call(start(key, 350), TTL) == HELD
        assert await store.key_spend(key.id) == (250, 750)

        unlimited, _ = await store.create_key("u", None, False, 0.0)
        assert await store.begin_call(start(unlimited, 10**15), TTL) == HELD
        assert await store.pending_count() == 3
        await books_ok(store)

    run(backend, body)


def test_a_hold_without_a_ledger_account_is_an_error_not_a_result(backend: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        with pytest.raises(LookupError):
            await store.begin_call(start("key_missing", 10), TTL)
        assert await store.pending_count() == 0

    run(backend, body)


def test_a_held_call_is_recorded_pending_with_its_hold(backend: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        key, _ = await store.create_key("k", None, False, 0.0)
        call = start(key, 700, estimate=120, idem="abc", at=100.5, lease_until=140.25)
        assert await store.begin_call(call, TTL) == HELD
        row = await store.get_call(call.id)
        assert row is not None and list(row) == CALL_COLUMNS
        expected = {
            "id": call.id, "key_id": key.id, "provider": "openai", "api": "chat.completions", "model": "gpt-test",
            "stream": 0, "status": "pending", "upstream_status": None, "usage_status": None, "usage_json": None,
            "cost_usd": None, "billed_nano": 0, "reserved_nano": 700, "estimate_nano": 120, "estimated": 0,
            "breakdown_json": None, "prices_json": '{"input": "1"}', "price_source": "test",
            "idempotency_key": "abc", "replay_of": None, "needs_reconciliation": 0, "overrun_nano": 0,
            "forwarded": 0, "lease_owner": "gw-1", "lease_expires_at": 140.25, "error_code": None, "message": None,
            "started_at": 100.5, "ended_at": None,
            "payer_id": None, "funding_json": None, "paid_json": None, "explanation": None,
        }  # fmt: skip
        assert {k: v for k, v in row.items() if k != "hold_id"} == expected
        (hold,) = await transfers_of(store, call.id)
        assert row["hold_id"] == hold.id
        assert (hold.kind, hold.state, hold.amount) == (TransferKind.HOLD, TransferState.PENDING, 700)
        assert (hold.debit_account, hold.credit_account, hold.pending_id) == (key.account, "provider:openai", None)
        accounts = {a.id: a for a in await store.accounts()}
        assert (accounts["provider:openai"].credits_pending, accounts["provider:openai"].credits_posted) == (700, 0)
        assert await store.get_call("call_nope") is None
        await books_ok(store)

    run(backend, body)


# ---- idempotency -------------------------------------------------------------------------------


def test_an_idempotency_key_in_flight_is_in_use_and_holds_nothing(backend: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        key, _ = await store.create_key("k", 10_000, False, 0.0)
        other, _ = await store.create_key("other", 10_000, False, 0.0)
        first = start(key, 1_000, idem="same")
        assert await store.begin_call(first, TTL) == HELD
        repeat = await store.begin_call(start(key, 1_000, idem="same", at=101.0), TTL)
        assert repeat == HoldOutcome("in_use", other_call_id=first.id)
        assert await store.key_spend(key.id) == (0, 1_000)
        # the key is scoped to the fairmeter key
        assert await store.begin_call(start(other, 1_000, idem="same"), TTL) == HELD
        assert await store.pending_count() == 2

    run(backend, body)


def test_concurrent_repeats_of_one_idempotency_key_hold_once(backend: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        key, _ = await store.create_key("k", 100_000, False, 0.0)
        calls = [start(key, 1_000, idem="burst") for _ in range(12)]
        outcomes = await asyncio.gather(*(store.begin_call(c, TTL) for c in calls))
        winners = [c.id for c, o in zip(calls, outcomes, strict=True) if o == HELD]
        assert len(winners) == 1
        assert all(o == HoldOutcome("in_use", other_call_id=winners[0]) for o in outcomes if o != HELD)
        assert await store.key_spend(key.id) == (0, 1_000)
        assert await store.pending_count() == 1
        await books_ok(store)

    run(backend, body)


def test_a_settled_idempotency_key_replays_its_stored_response_and_charges_nothing(backend: tuple[str, str]) -> None:
    stored = StoredResponse(200, [("content-type", "text/event-stream"), ("x-a", "1")], b"data: \x00\xff\n\n", True)

    async def body(store: Store) -> None:
        key, _ = await store.create_key("k", 1_000, False, 0.0)
        first = start(key, 900, idem="retry-me")
        assert await store.begin_call(first, TTL) == HELD
        await store.finish_call(first.id, end(900, stored=stored), 101.0)
        # the key is now at its cap, and a repeat still gets its replay (the cap is not asked)
        repeat = start(key, 900, idem="retry-me", at=200.0)
        outcome = await store.begin_call(repeat, TTL)
        assert outcome == HoldOutcome("replay", other_call_id=first.id, stored=stored)
        await store.record_replay(repeat, first.id, 200.5)
        assert await store.key_spend(key.id) == (900, 0)
        row = await store.get_call(repeat.id)
        assert row is not None
        assert (row["status"], row["usage_status"], row["cost_usd"], row["replay_of"]) == (
            "ok",
            "complete",
            "0",
            first.id,
        )
        assert (row["billed_nano"], row["reserved_nano"], row["hold_id"], row["ended_at"]) == (0, 0, None, 200.5)
        assert call_json(row)["billed_usd"] == "0" and call_json(row)["replay_of"] == first.id
        assert await transfers_of(store, repeat.id) == []

        # settled without a stored response: still a replay, with nothing to send
        key2, _ = await store.create_key("k2", None, False, 0.0)
        bare = start(key2, 50, idem="bare")
        assert await store.begin_call(bare, TTL) == HELD
        await store.finish_call(bare.id, end(10), 101.0)
        assert await store.begin_call(start(key2, 50, idem="bare"), TTL) == HoldOutcome("replay", other_call_id=bare.id)
        await books_ok(store)

    run(backend, body)


def test_a_voided_or_refused_idempotency_key_is_forwarded_again(backend: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        key, _ = await store.create_key("k", 1_000, False, 0.0)
        failed = start(key, 500, idem="again")
        assert await store.begin_call(failed, TTL) == HELD
        await store.finish_call(failed.id, end(0, status="upstream_error"), 101.0, void=True)
        second = start(key, 500, idem="again", at=102.0)
        assert await store.begin_call(second, TTL) == HELD
        assert await store.begin_call(start(key, 1, idem="again"), TTL) == HoldOutcome(
            "in_use", other_call_id=second.id
        )

        # a refused hold does not claim its key: the same key fits later, smaller
        too_big = start(key, 600, idem="big")
        assert (await store.begin_call(too_big, TTL)).kind == "refused"
        assert await store.begin_call(start(key, 400, idem="big"), TTL) == HELD
        assert await store.key_spend(key.id) == (0, 900)
        await books_ok(store)

    run(backend, body)


def test_an_idempotency_key_expires_after_its_ttl(backend: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        key, _ = await store.create_key("k", None, False, 0.0)
        first = start(key, 10, idem="ttl", at=100.0)
        assert await store.begin_call(first, 60) == HELD
        await store.finish_call(first.id, end(10), 101.0)
        assert (await store.begin_call(start(key, 10, idem="ttl", at=159.5), 60)).kind == "replay"
        fresh = start(key, 10, idem="ttl", at=160.0)  # exactly ttl later: the stored one is gone
        assert await store.begin_call(fresh, 60) == HELD
        assert await store.begin_call(start(key, 10, idem="ttl", at=161.0), 60) == HoldOutcome(
            "in_use", other_call_id=fresh.id
        )
        # an expired key in flight (its call outlived the TTL) is taken over too
        assert await store.begin_call(start(key, 10, idem="ttl", at=400.0), 60) == HELD

    run(backend, body)


# ---- settle, void, expire, overrun ---------------------------------------------------------------


def test_settle_posts_the_cost_and_releases_the_rest(backend: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        key, _ = await store.create_key("k", 10_000, False, 0.0)
        call = start(key, 1_000)
        await store.begin_call(call, TTL)
        e = end(300, at=105.5, prices_json='{"input": "2"}', price_source="flex", message="fine")
        assert await store.finish_call(call.id, e, 106.0) == 0
        assert await store.key_spend(key.id) == (300, 0)
        hold, post = await transfers_of(store, call.id)
        assert (hold.kind, hold.state) == (TransferKind.HOLD, TransferState.POSTED)
        assert (post.kind, post.state, post.amount, post.pending_id) == (
            TransferKind.POST,
            TransferState.POSTED,
            300,
            hold.id,
        )
        row = await store.get_call(call.id)
        assert row is not None
        assert {k: row[k] for k in ("status", "upstream_status", "usage_status", "billed_nano", "overrun_nano")} == {
            "status": "ok", "upstream_status": 200, "usage_status": "complete", "billed_nano": 300, "overrun_nano": 0,
        }  # fmt: skip
        assert (row["needs_reconciliation"], row["estimated"], row["lease_expires_at"], row["ended_at"]) == (
            0,
            0,
            None,
            105.5,
        )
        assert (row["prices_json"], row["price_source"], row["message"]) == ('{"input": "2"}', "flex", "fine")
        assert (row["usage_json"], row["cost_usd"]) == ('{"input_tokens": 3, "output_tokens": 4}', "0.000000300")
        assert call_json(row)["output_tokens"] == 4

        # without new prices the held call's prices stay
        other = start(key, 100)
        await store.begin_call(other, TTL)
        await store.finish_call(other.id, end(50), 106.0)
        row = await store.get_call(other.id)
        assert row is not None and (row["prices_json"], row["price_source"]) == ('{"input": "1"}', "test")
        assert await store.pending_count() == 0
        assert await books_ok(store) == []

    run(backend, body)


def test_void_releases_everything_whatever_was_billed(backend: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        key, _ = await store.create_key("k", 1_000, False, 0.0)
        call = start(key, 1_000, idem="v")
        await store.begin_call(call, TTL)
        e = end(999, status="upstream_error", stored=StoredResponse(500, [], b"x", False))
        assert await store.finish_call(call.id, e, 101.0, void=True) == 0
        assert await store.key_spend(key.id) == (0, 0)
        hold, void = await transfers_of(store, call.id)
        assert (hold.state, void.kind, void.amount, void.pending_id) == (
            TransferState.VOIDED,
            TransferKind.VOID,
            0,
            hold.id,
        )
        row = await store.get_call(call.id)
        assert row is not None and (row["status"], row["billed_nano"], row["overrun_nano"]) == ("upstream_error", 0, 0)
        # a voided key's stored response is not kept: the repeat is forwarded
        assert await store.begin_call(start(key, 1_000, idem="v"), TTL) == HELD
        accounts = {a.id: a for a in await store.accounts()}
        assert accounts["provider:openai"].credits_posted == 0
        await books_ok(store)

    run(backend, body)


def test_an_overrun_is_posted_in_full_flagged_and_reported(backend: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        key, _ = await store.create_key("k", 100, False, 0.0)
        call = start(key, 100)
        await store.begin_call(call, TTL)
        assert await store.finish_call(call.id, end(175), 101.0) == 75
        assert await store.key_spend(key.id) == (175, 0)  # never clamped, even past the cap
        kinds = [(t.kind, t.amount) for t in await transfers_of(store, call.id)]
        assert kinds == [(TransferKind.HOLD, 100), (TransferKind.POST, 100), (TransferKind.OVERRUN, 75)]
        row = await store.get_call(call.id)
        assert row is not None and (row["billed_nano"], row["overrun_nano"], row["needs_reconciliation"]) == (
            175,
            75,
            1,
        )
        assert call_json(row)["overrun_usd"] == "0.000000075"
        assert await store.reconciliation_calls() == [
            {"id": call.id, "status": "ok", "billed_nano": 175, "overrun_nano": 75}
        ]
        assert await books_ok(store) == ["overrun"]  # overruns are listed, and do not count against the cap
        refused = await store.begin_call(start(key, 1), TTL)
        assert refused.refused == HoldRefused(cap=100, spent=175, held=0, amount=1)

    run(backend, body)


def test_calls_to_reconcile_are_listed_by_id_whatever_their_order_of_arrival(backend: tuple[str, str]) -> None:
    """verify lists them in one order on every backend: by call id, not by when each row was written."""

    async def body(store: Store) -> None:
        key, _ = await store.create_key("k", None, False, 0.0)
        ids = ["call_c", "call_a", "call_b"]  # written in this order
        for call_id in ids:
            await store.begin_call(start(key, 100, call_id=call_id), TTL)
            assert await store.finish_call(call_id, end(150), 101.0) == 50
        listed = await store.reconciliation_calls()
        assert [c["id"] for c in listed] == sorted(ids)
        assert [c["id"] for c in (await store.books()).reconciliation] == sorted(ids)

    run(backend, body)


def test_expiry_settles_at_the_estimate_and_flags_reconciliation(backend: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        key, _ = await store.create_key("k", None, False, 0.0)
        call = start(key, 800, estimate=120)
        await store.begin_call(call, TTL)
        e = replace(end(120), status="upstream_cut", usage_status="unknown", estimated=True, usage_json=None)
        assert await store.finish_call(call.id, e, 500.0, expired=True, needs_reconciliation=True) == 0
        hold, expire = await transfers_of(store, call.id)
        assert (hold.state, expire.kind, expire.amount) == (TransferState.EXPIRED, TransferKind.EXPIRE, 120)
        assert await store.key_spend(key.id) == (120, 0)
        row = await store.get_call(call.id)
        assert row is not None and (row["estimated"], row["needs_reconciliation"], row["usage_status"]) == (
            1,
            1,
            "unknown",
        )
        assert await store.reconciliation_calls() == [
            {"id": call.id, "status": "upstream_cut", "billed_nano": 120, "overrun_nano": 0}
        ]
        assert await books_ok(store) == []

    run(backend, body)


def test_a_call_resolves_once_even_when_resolutions_race(backend: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        key, _ = await store.create_key("k", 10_000, False, 0.0)
        call = start(key, 1_000)
        await store.begin_call(call, TTL)
        assert await store.finish_call(call.id, end(1_400), 101.0) == 400
        assert await store.finish_call(call.id, end(2_000), 102.0) == 0
        assert await store.finish_call(call.id, end(0), 102.0, void=True) == 0
        assert await store.key_spend(key.id) == (1_400, 0)
        assert len(await transfers_of(store, call.id)) == 3

        racing = [start(key, 500) for _ in range(6)]
        for c in racing:
            await store.begin_call(c, TTL)
        attempts = [
            f
            for c in racing
            for f in (
                store.finish_call(c.id, end(200), 101.0),
                store.finish_call(c.id, end(700), 101.0),
                store.finish_call(c.id, end(0), 101.0, void=True),
            )
        ]
        await asyncio.gather(*attempts)
        for c in racing:
            hold, *resolutions = await transfers_of(store, c.id)
            assert hold.state is not TransferState.PENDING
            assert len([t for t in resolutions if t.kind is not TransferKind.OVERRUN]) == 1
        assert await store.pending_count() == 0
        await books_ok(store)

    run(backend, body)


# ---- leases ------------------------------------------------------------------------------------


def test_leases_renew_for_their_owner_and_lapse_into_lapsed_calls(backend: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        key, _ = await store.create_key("k", None, False, 0.0)
        mine = [start(key, 10, owner="gw-1", lease_until=130.0, estimate=3) for _ in range(3)]
        theirs = start(key, 10, owner="gw-2", lease_until=130.0, estimate=4)
        for c in [*mine, theirs]:
            await store.begin_call(c, TTL)
        await store.finish_call(mine[2].id, end(5), 101.0)

        assert await store.renew_leases("gw-1", 200.0) == 2  # the finished call is not renewed
        assert await store.renew_leases("gw-9", 200.0) == 0
        assert await store.lapsed_calls(130.0) == []  # not lapsed at exactly the expiry
        assert await store.lapsed_calls(150.0) == [LapsedCall(theirs.id, False, 4)]
        lapsed = await store.lapsed_calls(250.0)
        assert sorted(lapsed, key=lambda c: c.id) == sorted(
            [LapsedCall(mine[0].id, False, 3), LapsedCall(mine[1].id, False, 3), LapsedCall(theirs.id, False, 4)],
            key=lambda c: c.id,
        )
        row = await store.get_call(mine[0].id)
        assert row is not None and row["lease_expires_at"] == 200.0
        await store.finish_call(theirs.id, end(0), 250.0, void=True)
        assert sorted(c.id for c in await store.lapsed_calls(10_000.0)) == sorted(c.id for c in mine[:2])

    run(backend, body)


def test_mark_forwarded_is_queued_and_written_before_close(backend: tuple[str, str]) -> None:
    async def first(store: Store) -> str:
        key, _ = await store.create_key("k", None, False, 0.0)
        call = start(key, 10, lease_until=130.0)
        await store.begin_call(call, TTL)
        store.mark_forwarded(call.id)  # returns at once; close() waits for the write
        return call.id

    call_id = run(backend, first)

    async def second(store: Store) -> None:
        assert await store.lapsed_calls(131.0) == [LapsedCall(call_id, True, 5)]
        row = await store.get_call(call_id)
        assert row is not None and row["forwarded"] == 1

    run(backend, second)


# ---- reads -------------------------------------------------------------------------------------


def test_refusals_are_recorded_without_a_transfer(backend: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        key, _ = await store.create_key("k", 5, False, 0.0)
        call = replace(start(key, 50, idem="i"), stream=True)
        await store.record_refusal(call, "refused", "budget_exceeded", "over budget", 100.25)
        anonymous = replace(start(None, 0), model=None, prices_json=None, price_source=None)
        await store.record_refusal(anonymous, "bad_request", "invalid_api_key", "no key", 100.5)
        row = await store.get_call(call.id)
        assert row is not None and list(row) == CALL_COLUMNS
        assert {k: row[k] for k in ("status", "usage_status", "cost_usd", "reserved_nano", "stream", "error_code")} == {
            "status": "refused", "usage_status": "error", "cost_usd": None, "reserved_nano": 50, "stream": 1,
            "error_code": "budget_exceeded",
        }  # fmt: skip
        assert (row["message"], row["ended_at"], row["idempotency_key"], row["hold_id"]) == (
            "over budget",
            100.25,
            "i",
            None,
        )
        row = await store.get_call(anonymous.id)
        assert row is not None and (row["key_id"], row["model"], row["error_code"]) == (None, None, "invalid_api_key")
        assert await store.transfers() == [] and await store.pending_count() == 0
        assert call_json(row)["input_tokens"] == 0

    run(backend, body)


def test_list_calls_pages_newest_first_with_filters(backend: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        a, _ = await store.create_key("a", None, False, 0.0)
        b, _ = await store.create_key("b", 1_000, False, 0.0)
        made: list[tuple[float, str, str | None, str]] = []  # (started_at, id, key, status)
        times = [100.0, 100.0, 100.0, 101.5, 102.0, 102.0, 103.0, 99.0, 104.0, 104.0, 105.0, 106.0, 104.0]
        for n, at in enumerate(times):
            key = a if n % 3 else b
            call = start(key, 5, at=at, call_id=f"call_{n:02d}_{'x' if n % 2 else 'y'}")
            if n % 4 == 0:
                await store.record_refusal(call, "refused", "budget_exceeded", "no", at)
                status = "refused"
            else:
                assert await store.begin_call(call, TTL) == HELD
                status = "pending"
                if n % 4 == 1:
                    await store.finish_call(call.id, end(2), at + 1)
                    status = "ok"
            made.append((at, call.id, key.id, status))

        def expect(pred: Callable[[tuple[float, str, str | None, str]], bool]) -> list[str]:
            return [m[1] for m in sorted(filter(pred, made), reverse=True)]

        async def pages(page: CallPage) -> list[str]:
            out: list[str] = []
            while True:
                rows = await store.list_calls(page)
                assert all(list(r) == CALL_COLUMNS for r in rows)
                out += [r["id"] for r in rows]
                if len(rows) < page.limit:
                    return out
                page = replace(page, cursor=(rows[-1]["started_at"], rows[-1]["id"]))

        assert [r["id"] for r in await store.list_calls(CallPage())] == expect(lambda m: True)
        for limit in (1, 2, 3, 100):
            assert await pages(CallPage(limit=limit)) == expect(lambda m: True)
        assert await pages(CallPage(key_id=a.id, limit=2)) == expect(lambda m: m[2] == a.id)
        assert await pages(CallPage(since=100.0, until=104.0, limit=2)) == expect(lambda m: 100.0 <= m[0] < 104.0)
        assert await pages(CallPage(status="pending", limit=1)) == expect(lambda m: m[3] == "pending")
        both = CallPage(key_id=b.id, status="refused", since=101.0, limit=1)
        assert await pages(both) == expect(lambda m: m[2] == b.id and m[3] == "refused" and m[0] >= 101.0)
        assert expect(lambda m: m[2] == b.id and m[3] == "refused" and m[0] >= 101.0)  # the filter is not vacuous
        assert await store.list_calls(CallPage(key_id="key_nope")) == []
        cursor = (102.0, "call_05_x")
        assert [r["id"] for r in await store.list_calls(CallPage(cursor=cursor))] == expect(
            lambda m: (m[0], m[1]) < cursor
        )

    run(backend, body)


def test_books_balance_over_a_mix_of_outcomes(backend: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        keys = [(await store.create_key(f"k{n}", cap, False, 0.0))[0] for n, cap in enumerate([3_000, None, 500])]
        outcomes: list[HoldOutcome] = []
        for n in range(30):
            key = keys[n % 3]
            call = start(key, 100 + 37 * n, provider="anthropic" if n % 2 else "openai")
            outcome = await store.begin_call(call, TTL)
            outcomes.append(outcome)
            if outcome.kind != "held":
                continue
            if n % 5 == 0:
                await store.finish_call(call.id, end(0), 101.0, void=True)
            elif n % 5 == 1:
                await store.finish_call(call.id, end(call.reserved + 3), 101.0)
            elif n % 5 == 2:
                await store.finish_call(call.id, end(call.reserved // 3), 101.0)
        assert {o.kind for o in outcomes} == {"held", "refused"}
        kinds = await books_ok(store)
        assert set(kinds) == {"overrun"}
        accounts = {a.id for a in await store.accounts()}
        assert {"provider:openai", "provider:anthropic"} <= accounts
        books = await store.books()  # the same reads, in one snapshot
        assert sorted(books.accounts, key=lambda a: a.id) == sorted(await store.accounts(), key=lambda a: a.id)
        assert books.transfers == await store.transfers()
        assert books.pending_calls == await store.pending_count() > 0
        assert sorted(r["id"] for r in books.reconciliation) == sorted(
            r["id"] for r in await store.reconciliation_calls()
        )

    run(backend, body)
