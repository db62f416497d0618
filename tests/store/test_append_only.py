"""The ledger is append-only (issue 3 §5: "corrections are new entries, never edits"), on both backends.

No transfer is ever updated or deleted, by the gateway or anyone else with a connection (the database refuses
it), and every hold is resolved by exactly one transfer that references it: the spend leg's and each funding
bucket's, whatever the outcome (settled, voided, expired, overrun) and whichever process settles it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from fairmeter.ledger.model import TransferKind, TransferState
from fairmeter.ledger.verify import verify_books
from fairmeter.store import Store, open_store
from fairmeter.store.records import CallStart

pytest_plugins = ("tests.pg",)
DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))

from make_pre_m003 import NOW, USD, call, end, subscriber  # noqa: E402  (the old database's own set-up)

RESOLUTIONS = ("post", "void", "expire")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{request.getfixturevalue('tmp_path') / 'ledger.db'}"


def with_store(url: str, body: Callable[[Store], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        store = open_store(url, NOW)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


async def raw_transfers(store: Store) -> list[dict[str, Any]]:
    """Every column of every transfer row as stored, in id order."""
    return await store.run(lambda tx: tx.fetch("SELECT * FROM transfers ORDER BY id"))


def path(row: dict[str, Any]) -> tuple[str, str, str]:
    """A transfer's call and accounts; a provider account without its shard (PostgreSQL spreads a provider's
    credits over shard rows: ``provider:openai/3``)."""
    return row["call_id"], row["debit_account"], re.sub(r"/[0-9]+$", "", row["credit_account"])


def check_resolutions(rows: list[dict[str, Any]], settled: set[str]) -> None:
    """Each hold of a settled call is referenced by exactly one post, void or expire; no other hold is."""
    holds = {r["id"]: r for r in rows if r["kind"] == "hold"}
    refs: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        if r["kind"] in RESOLUTIONS and r["pending_id"] is not None:
            refs.setdefault(r["pending_id"], []).append(r)
    assert set(refs) <= set(holds)
    for hold_id, hold in holds.items():
        assert hold["state"] == "pending"  # as written; never updated
        mine = refs.get(hold_id, [])
        assert len(mine) == (1 if hold["call_id"] in settled else 0), (hold, mine)
        for r in mine:  # the resolution moves money along the hold's own path, never more than it held
            assert path(r) == path(hold)
            assert r["amount"] <= hold["amount"] and (r["kind"] != "void" or r["amount"] == 0)


def test_every_hold_is_resolved_once_by_a_transfer_that_references_it_and_no_row_changes(url: str) -> None:
    async def body(store: Store) -> None:
        key_id, payer = await subscriber(store)
        # W of $0.3 each: the first fills most of the window, the next spill to the grant, the credits, overage
        calls = [call(n, key_id, payer, 3 * USD // 10) for n in range(6)]
        for c in calls:
            assert (await store.begin_call(c, 86_400)).kind == "held"
        seen = await raw_transfers(store)
        check_resolutions(seen, set())
        settled = set()
        outcomes: list[tuple[int, dict[str, Any]]] = [
            (2 * USD // 10, {}),  # cheaper than its hold: later buckets post less, or are voided
            (0, {"void": True}),  # a failed call: every hold voided
            (3 * USD // 10 + 7, {}),  # above its hold: an overrun beside the resolutions
            (USD // 20, {"expired": True, "needs_reconciliation": True}),  # a lapsed lease
        ]
        for c, (billed, how) in zip(calls, outcomes, strict=False):
            await store.finish_call(c.id, end(billed), NOW + 2, **how)
            settled.add(c.id)
            now = await raw_transfers(store)
            assert now[: len(seen)] == seen  # what was there is still there, unchanged
            seen = now
            check_resolutions(seen, settled)
        balanced, _, problems = verify_books(await store.accounts(), await store.transfers())
        assert balanced, problems
        states = {t.call_id: t.state for t in await store.transfers() if t.kind is TransferKind.HOLD}
        assert [states[c.id] for c in calls] == [
            TransferState.POSTED, TransferState.VOIDED, TransferState.POSTED, TransferState.EXPIRED,
            TransferState.PENDING, TransferState.PENDING,
        ]  # fmt: skip
        kinds = {r["kind"] for r in seen}
        assert {"hold", "post", "void", "expire", "overrun"} <= kinds

    with_store(url, body)


def test_a_call_held_by_another_process_is_resolved_the_same_way(url: str) -> None:
    """The settling store did not place the hold: it finds the funding holds by the call (no cached plan)."""

    async def hold(store: Store) -> list[CallStart]:
        key_id, payer = await subscriber(store)
        calls = [call(n, key_id, payer, 3 * USD // 10) for n in range(3)]
        for c in calls:
            assert (await store.begin_call(c, 86_400)).kind == "held"
        return calls

    calls = with_store(url, hold)

    async def settle(store: Store) -> None:
        for c, billed in zip(calls, (USD // 10, 0, 2 * USD // 10), strict=True):
            await store.finish_call(c.id, end(billed), NOW + 2, void=billed == 0)
        check_resolutions(await raw_transfers(store), {c.id for c in calls})
        balanced, _, problems = verify_books(await store.accounts(), await store.transfers())
        assert balanced, problems

    with_store(url, settle)


@pytest.mark.parametrize(
    "statement",
    ["UPDATE transfers SET amount = amount + 1", "UPDATE transfers SET state = 'posted'", "DELETE FROM transfers"],
)
def test_the_database_refuses_to_change_or_remove_a_transfer(url: str, statement: str) -> None:
    async def body(store: Store) -> None:
        key_id, payer = await subscriber(store)
        await store.begin_call(call(1, key_id, payer, USD // 10), 86_400)
        before = await raw_transfers(store)
        with pytest.raises(Exception, match=r"the ledger is append-only: a transfer is never (updated|deleted)"):
            await store.run(lambda tx: tx.execute(statement))
        assert await raw_transfers(store) == before

    with_store(url, body)


@pytest.mark.postgres
def test_postgres_refuses_to_truncate_the_transfers(pg_url: str) -> None:
    async def body(store: Store) -> None:
        await store.create_key("k", None, False, NOW)
        with pytest.raises(Exception, match="the ledger is append-only: a transfer is never truncated"):
            await store.run(lambda tx: tx.execute("TRUNCATE transfers"))

    with_store(pg_url, body)


def test_a_database_from_before_m003_upgrades_and_its_old_holds_keep_their_outcomes(tmp_path: Path) -> None:
    """``data/pre_m003.db`` was made by the code before migration m003 (``data/make_pre_m003.py``, at commit
    fe30fc0): four calls resolved by updating their holds' state (funding postings referencing nothing), two
    pending. Opened now, it takes the triggers, verifies clean, and its pending calls settle the new way."""
    path = tmp_path / "old.db"
    shutil.copy(DATA / "pre_m003.db", path)
    url = f"sqlite:///{path}"

    async def body(store: Store) -> None:
        applied = await store.run(lambda tx: tx.fetch("SELECT name FROM migrations ORDER BY name"))
        assert [r["name"] for r in applied] == ["m001_core", "m002_funding", "m003_append_only"]
        balanced, _, problems = verify_books(await store.accounts(), await store.transfers())
        assert balanced and [p.kind for p in problems] == ["overrun"], problems
        states = {t.id: t.state for t in await store.transfers() if t.kind is TransferKind.HOLD}
        assert list(states.values()).count(TransferState.PENDING) == 4  # the two pending calls, two legs each
        for call_id, billed in (("call_old0004", USD // 10), ("call_old0005", 0)):
            await store.finish_call(call_id, end(billed), NOW + 3, void=billed == 0)
        balanced, _, problems = verify_books(await store.accounts(), await store.transfers())
        assert balanced, problems
        rows = await raw_transfers(store)
        new = {r["call_id"] for r in rows if r["pending_id"] is not None and r["kind"] in RESOLUTIONS}
        assert {"call_old0004", "call_old0005"} <= new
        outcomes = {t.call_id: t.state for t in await store.transfers() if t.kind is TransferKind.HOLD}
        assert outcomes == {
            "call_old0000": TransferState.POSTED, "call_old0001": TransferState.VOIDED,
            "call_old0002": TransferState.POSTED, "call_old0003": TransferState.EXPIRED,
            "call_old0004": TransferState.POSTED, "call_old0005": TransferState.VOIDED,
        }  # fmt: skip
        with pytest.raises(Exception, match="append-only"):
            await store.run(lambda tx: tx.execute("UPDATE transfers SET state = 'pending'"))

    with_store(url, body)


def test_racing_settlements_of_one_call_resolve_each_hold_once(url: str) -> None:
    """Two processes settle the same calls (the one that held them, with its plan; another, from the record),
    in both orders and at once: one settlement applies per call, and with it one resolution per hold, both legs."""

    async def body(held_by: Store) -> None:
        key_id, payer = await subscriber(held_by)
        calls = [call(n, key_id, payer, 3 * USD // 10) for n in range(6)]
        for c in calls:
            assert (await held_by.begin_call(c, 86_400)).kind == "held"
        other = open_store(url, NOW)
        try:
            # the other process first: the holder's planned settlement then finds the call settled
            for c in calls[:2]:
                await other.finish_call(c.id, end(USD // 7), NOW + 2)
                assert await held_by.finish_call(c.id, end(USD // 10), NOW + 2) == 0
            for c in calls[2:4]:  # the holder first
                await held_by.finish_call(c.id, end(USD // 10), NOW + 2, void=c is calls[3])
                await other.finish_call(c.id, end(USD // 7), NOW + 2)
            await asyncio.gather(  # at once
                *(held_by.finish_call(c.id, end(USD // 10), NOW + 2) for c in calls[4:]),
                *(other.finish_call(c.id, end(USD // 7), NOW + 2) for c in calls[4:]),
            )
        finally:
            await other.close()
        check_resolutions(await raw_transfers(held_by), {c.id for c in calls})
        balanced, _, problems = verify_books(await held_by.accounts(), await held_by.transfers())
        assert balanced, problems

    with_store(url, body)
