"""Ledger properties on PostgreSQL under interleaving: random holds, settles, voids and racing resolutions.

Each example places a random batch of calls on one key concurrently (they share the store's pool, so
their statements really interleave on the server) and resolves them, sometimes twice at once. After
every step the key's posted + pending stays under its cap (overruns aside); at the end the books
balance, nothing is pending, and every hold was resolved exactly once.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fairmeter.ledger.model import TransferKind, TransferState
from fairmeter.ledger.verify import verify_books
from fairmeter.store.postgres import PostgresStore
from fairmeter.store.protocol import Store
from fairmeter.store.records import CallEnd, CallStart

pytest_plugins = ("tests.pg",)
pytestmark = pytest.mark.postgres

RESOLUTIONS = ("settle", "overrun", "void", "expire")
_ids = itertools.count()

call_plan = st.tuples(
    st.integers(min_value=0, max_value=400),  # hold
    st.sampled_from(RESOLUTIONS),
    st.integers(min_value=0, max_value=400),  # cost (settle: capped at the hold; overrun: added to it)
    st.booleans(),  # a second, racing resolution
    st.integers(min_value=0, max_value=3),  # event-loop turns before the hold (interleaving)
)


def _start(key_id: str, reserved: int) -> CallStart:
    return CallStart(
        f"p{next(_ids)}", key_id, "openai", "chat", "m", False, reserved, reserved // 3,
        None, None, None, 1.0, "gw", 60.0,
    )  # fmt: skip


def _end(billed: int) -> CallEnd:
    return CallEnd("ok", 200, "complete", None, None, billed, False, None, 2.0)


async def _resolve(store: Store, call: CallStart, how: str, cost: int) -> int:
    """One resolution attempt; returns the overrun it posted (0 if another resolution got there first)."""
    if how == "void":
        return await store.finish_call(call.id, _end(0), 2.0, void=True)
    if how == "expire":
        return await store.finish_call(call.id, _end(call.estimate), 2.0, expired=True, needs_reconciliation=True)
    billed = call.reserved + 1 + cost if how == "overrun" else min(cost, call.reserved)
    return await store.finish_call(call.id, _end(billed), 2.0)


async def _scenario(url: str, cap: int, plans: list[tuple[int, str, int, bool, int]]) -> None:
    store = await PostgresStore.open(url, 0.0)
    try:
        key, _ = await store.create_key("prop", cap, False, 0.0)
        overruns: list[int] = []
        held: list[CallStart] = []
        seen: list[int] = []  # posted + pending of the key, read after each step

        async def under_cap() -> None:
            seen.append(sum(await store.key_spend(key.id)))

        async def one(amount: int, how: str, cost: int, race: bool, turns: int) -> None:
            for _ in range(turns):
                await asyncio.sleep(0)
            call = _start(key.id, amount)
            outcome = await store.begin_call(call, 60)
            if outcome.kind == "refused":
                r = outcome.refused
                assert r is not None and r.amount == amount and r.cap == cap
                assert r.spent + r.held + amount > cap  # true numbers that did not fit (overruns may pass the cap)
                return
            assert outcome.kind == "held"
            held.append(call)
            await under_cap()
            attempts = [_resolve(store, call, how, cost)]
            if race:
                attempts.append(_resolve(store, call, RESOLUTIONS[(RESOLUTIONS.index(how) + 1) % 4], cost))
            overruns.extend(await asyncio.gather(*attempts))
            await under_cap()

        await asyncio.gather(*(one(*p) for p in plans))
        # An overrun may be committed before its finish_call returns, so every reading is held to the
        # cap plus all overruns; overruns are the only way past the cap.
        assert max(seen, default=0) <= cap + sum(overruns)

        balanced, caps_ok, problems = verify_books(await store.accounts(), await store.transfers())
        assert balanced and caps_ok, problems
        posted, pending = await store.key_spend(key.id)
        assert pending == 0
        transfers = await store.transfers()
        billed = 0
        for call in held:
            mine = [t for t in transfers if t.call_id == call.id]
            (hold,) = [t for t in mine if t.kind is TransferKind.HOLD]
            resolutions = [t for t in mine if t.kind in (TransferKind.POST, TransferKind.VOID, TransferKind.EXPIRE)]
            assert hold.state is not TransferState.PENDING and len(resolutions) == 1
            over = [t for t in mine if t.kind is TransferKind.OVERRUN]
            assert len(over) <= 1 and all(t.pending_id == hold.id for t in resolutions + over)
            row = await store.get_call(call.id)
            assert row is not None and row["status"] != "pending"
            assert row["billed_nano"] == resolutions[0].amount + sum(t.amount for t in over)
            billed += row["billed_nano"]
        assert posted == billed
    finally:
        await store.close()


# The schema is shared by the examples on purpose: each example has a key of its own, and the books
# (checked whole) must balance across all of them.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cap=st.integers(min_value=0, max_value=2_000), plans=st.lists(call_plan, min_size=1, max_size=24))
def test_interleaved_holds_and_resolutions_keep_the_books(
    pg_url: str, cap: int, plans: list[tuple[int, str, int, bool, int]]
) -> None:
    asyncio.run(_scenario(pg_url, cap, plans))
