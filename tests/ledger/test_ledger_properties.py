"""Money-path properties of the ledger, on a real SQLite file and on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairmeter.ledger.model import (
    Account,
    Transfer,
    TransferKind,
    TransferState,
    check_hold,
    settlement_for,
    with_outcomes,
)
from fairmeter.ledger.verify import verify_books
from fairmeter.store import open_store
from fairmeter.store.records import DEFAULT_PAYER, CallEnd, CallStart
from fairmeter.store.sqlite import SQLiteStore

pytest_plugins = ("tests.pg",)

amounts = st.integers(min_value=0, max_value=10**12)


@given(held=amounts, actual=amounts)
def test_settlement_splits_exactly(held: int, actual: int) -> None:
    s = settlement_for(held, actual)
    assert s.posted + s.released == held
    assert s.posted + s.overrun == actual
    assert s.posted <= held and min(s.posted, s.released, s.overrun) >= 0
    assert (s.overrun > 0) == (actual > held)


RESOLVE = {TransferKind.POST: TransferState.POSTED, TransferKind.VOID: TransferState.VOIDED,
           TransferKind.EXPIRE: TransferState.EXPIRED}  # fmt: skip


@given(
    calls=st.lists(
        st.tuples(st.integers(1, 3), st.sampled_from([None, *RESOLVE]), st.booleans(), st.booleans()), max_size=12
    )
)
def test_each_hold_takes_the_outcome_of_the_transfer_that_references_it(
    calls: list[tuple[int, TransferKind | None, bool, bool]],
) -> None:
    """A call's holds (one per leg or bucket), each resolved by its own post / void / expire or not yet; an overrun
    or a funding post without a reference beside them resolves nothing; a hold stored resolved (before m003) keeps
    its stored state."""
    rows: list[Transfer] = []
    want: dict[int, TransferState] = {}

    def add(kind: TransferKind, call: str, pending_id: int | None, state: TransferState) -> int:
        rows.append(Transfer(len(rows) + 1, call, kind, "a", "b", 5, pending_id, state))
        return len(rows)

    for n, (holds, outcome, overrun, legacy) in enumerate(calls):
        call = f"c{n}"
        ids = [add(TransferKind.HOLD, call, None, TransferState.PENDING) for _ in range(holds)]
        if overrun:
            add(TransferKind.OVERRUN, call, ids[0], TransferState.POSTED)
            add(TransferKind.POST, call, None, TransferState.POSTED)  # placed at settlement: references nothing
        for hold in ids:
            if legacy and outcome is not None:  # resolved by an update of its state, as before migration m003
                rows[hold - 1] = Transfer(hold, call, TransferKind.HOLD, "a", "b", 5, None, RESOLVE[outcome])
                want[hold] = RESOLVE[outcome]
            elif outcome is not None:
                add(outcome, call, hold, TransferState.POSTED)
                want[hold] = RESOLVE[outcome]
            else:
                want[hold] = TransferState.PENDING
    out = with_outcomes(rows)
    assert [t.id for t in out] == [t.id for t in rows]
    assert {t.id: t.state for t in out if t.kind is TransferKind.HOLD} == want
    assert [t for t in out if t.kind is not TransferKind.HOLD] == [t for t in rows if t.kind is not TransferKind.HOLD]
    assert with_outcomes(out) == out


@given(cap=st.none() | amounts, spent=amounts, held=amounts, amount=amounts)
def test_check_hold_refuses_exactly_when_over_cap(cap: int | None, spent: int, held: int, amount: int) -> None:
    refused = check_hold(cap, spent, held, amount)
    fits = cap is None or spent + held + amount <= cap
    assert (refused is None) == fits
    if refused is not None:
        assert refused.room == max(0, refused.cap - spent - held)
        assert spent + held + amount > refused.cap  # refused only when it would not fit


def _start(call_id: str, key_id: str, reserved: int, now: float) -> CallStart:
    return CallStart(
        id=call_id,
        key_id=key_id,
        provider="openai",
        api="chat",
        model="m",
        stream=False,
        reserved=reserved,
        estimate=reserved // 3,
        prices_json=None,
        price_source=None,
        idempotency_key=None,
        started_at=now,
        lease_owner="gw_test",
        lease_expires_at=now + 60,
        payer_id=DEFAULT_PAYER,
    )


def _end(billed: int, status: str = "ok") -> CallEnd:
    return CallEnd(status, 200, "complete", None, None, billed, False, None, 0.0)


op = st.tuples(
    st.sampled_from(["hold", "settle", "void", "expire", "overrun"]),
    st.integers(min_value=0, max_value=5_000),
    st.integers(min_value=0, max_value=5_000),
)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_books_balance_and_caps_hold_after_any_sequence(backend: str, request: pytest.FixtureRequest) -> None:
    """On both backends, with the funding leg (the default payer's pay-as-you-go overage) on every call."""
    if backend == "postgres":
        make_url: Callable[[], str] = request.getfixturevalue("new_pg_url")
    else:
        tmp = request.getfixturevalue("tmp_path")
        make_url = lambda: f"sqlite:///{tmp / secrets.token_hex(4)}.db"  # noqa: E731

    @settings(max_examples=60 if backend == "sqlite" else 20, deadline=None)
    @given(cap=st.integers(min_value=0, max_value=20_000), ops=st.lists(op, max_size=40))
    def sequences(cap: int, ops: list[tuple[str, int, int]]) -> None:
        asyncio.run(_run_sequence(make_url(), cap, ops))

    sequences()


async def _run_sequence(url: str, cap: int, ops: list[tuple[str, int, int]]) -> None:
    store = open_store(url, 0.0)
    """Each operation its own committed unit; after each, the books balance and the cap holds."""
    key, _ = await store.create_key("k", cap, False, 0.0)
    pending: list[tuple[str, int]] = []
    overruns = 0
    for n, (kind, a, b) in enumerate(ops):
        if kind == "hold" or not pending:
            outcome = await store.begin_call(_start(f"c{n}", key.id, a, 0.0), 86400)
            if outcome.kind == "held":
                pending.append((f"c{n}", a))
            else:
                r = outcome.refused
                assert r is not None and r.spent + r.held + a > cap  # refused only when over
        else:
            call_id, held = pending.pop(b % len(pending))
            if kind == "settle":
                await store.finish_call(call_id, _end(min(b, held)), 1.0)
            elif kind == "void":
                await store.finish_call(call_id, _end(0, "upstream_error"), 1.0, void=True)
            elif kind == "expire":
                await store.finish_call(call_id, _end(held // 3), 1.0, expired=True, needs_reconciliation=True)
            else:
                overruns += await store.finish_call(call_id, _end(held + 1 + b), 1.0)
        balanced, caps_ok, problems = verify_books(await store.accounts(), await store.transfers())
        assert balanced, problems
        assert caps_ok, problems
        spent, held_now = await store.key_spend(key.id)
        assert spent + held_now - overruns <= cap
        assert held_now == sum(h for _, h in pending)
    await store.close()


def test_verify_detects_a_tampered_balance(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'l.db'}", 0.0)

    async def settled_call() -> str:
        key, _ = await store.create_key("k", 1000, False, 0.0)
        await store.begin_call(_start("c1", key.id, 500, 0.0), 86400)
        await store.finish_call("c1", _end(200), 1.0)
        return key.account

    account = asyncio.run(settled_call())
    assert verify_books(asyncio.run(store.accounts()), asyncio.run(store.transfers()))[0]
    store.db.execute("UPDATE accounts SET debits_posted = debits_posted + 1 WHERE id = ?", (account,))
    balanced, _, problems = verify_books(asyncio.run(store.accounts()), asyncio.run(store.transfers()))
    assert not balanced
    assert {p.kind for p in problems} >= {"unbalanced", "balance_mismatch"}


@given(kind=st.sampled_from([TransferKind.POST, TransferKind.VOID, TransferKind.EXPIRE]), amount=st.integers(0, 5))
def test_verify_finds_a_hold_resolved_twice_or_a_resolution_of_nothing(kind: TransferKind, amount: int) -> None:
    """Balanced accounts do not hide a second resolution of a hold, nor one that names no hold of its call."""
    hold = Transfer(1, "c1", TransferKind.HOLD, "key:k", "provider:p", 5, None, TransferState.PENDING)
    post = Transfer(2, "c1", TransferKind.POST, "key:k", "provider:p", 3, 1, TransferState.POSTED)
    other = Transfer(3, "c2", TransferKind.HOLD, "key:k", "provider:p", 5, None, TransferState.PENDING)
    accounts = [Account("key:k", None, 5, 3, 0, 0), Account("provider:p", None, 0, 0, 5, 3)]
    assert verify_books(accounts, with_outcomes([hold, post, other]))[:2] == (True, True)
    again = Transfer(4, "c1", kind, "key:k", "provider:p", amount, 1, TransferState.POSTED)
    balanced, _, problems = verify_books(accounts, with_outcomes([hold, post, other, again]))
    assert not balanced and "resolved_twice" in {p.kind for p in problems}
    stray = Transfer(4, "c1", kind, "key:k", "provider:p", amount, 3, TransferState.POSTED)  # c2's hold
    balanced, _, problems = verify_books(accounts, with_outcomes([hold, post, other, stray]))
    assert not balanced and "dangling_resolution" in {p.kind for p in problems}
