"""Group commit: concurrent hot-path writes share one transaction; a failing one fails alone."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fairmeter.store import batch
from fairmeter.store import sqlite as sqlite_store
from fairmeter.store.records import CallEnd, CallStart
from fairmeter.store.sqlite import SQLiteStore


def _start(call_id: str, key_id: str, reserved: int = 1_000) -> CallStart:
    return CallStart(
        call_id, key_id, "openai", "chat", "m", False, reserved, 0, None, None, None, 0.0, "gw_test", 60.0
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(f"sqlite:///{tmp_path / 'g.db'}", 0.0)
    yield opened
    asyncio.run(opened.close())


def test_concurrent_holds_commit_in_one_batch_and_a_failure_stays_its_own(store: SQLiteStore) -> None:
    async def main() -> tuple[str, list[object]]:
        key, _ = await store.create_key("k", None, False, 0.0)
        holds = [store.begin_call(_start(f"c{n}", key.id), 86400) for n in range(5)]
        holds.insert(2, store.begin_call(_start("c_orphan", "key_missing"), 86400))  # no ledger account: raises
        return key.id, await asyncio.gather(*holds, return_exceptions=True)

    key_id, results = asyncio.run(main())
    assert isinstance(results[2], LookupError)
    assert [getattr(r, "kind", r) for i, r in enumerate(results) if i != 2] == ["held"] * 5
    assert asyncio.run(store.key_spend(key_id)) == (0, 5_000)
    assert asyncio.run(store.get_call("c_orphan")) is None
    # one batch: the first attempt (rolled back), then each operation alone
    assert (store.committer.batches, store.committer.operations) == (1, 6)
    assert not store.db.in_transaction


def test_an_idle_committer_flushes_on_the_next_loop_iteration(store: SQLiteStore) -> None:
    async def main() -> int:
        fut = store.committer.run(lambda: 7)
        await asyncio.sleep(0)  # one iteration: the flush scheduled with call_soon has run
        assert fut.done()
        return await fut

    assert asyncio.run(main()) == 7
    assert store.committer.batches == 1


def test_a_forwarded_mark_is_not_waited_for_and_is_committed_by_close(store: SQLiteStore, tmp_path: Path) -> None:
    async def main() -> None:
        key, _ = await store.create_key("k", None, False, 0.0)
        await store.begin_call(_start("c1", key.id), 86400)
        store.mark_forwarded("c1")
        assert store.committer.batches == 1  # queued, not run
        await store.close()

    asyncio.run(main())
    with contextlib.closing(sqlite3.connect(tmp_path / "g.db")) as db:
        assert db.execute("SELECT forwarded FROM calls WHERE id = 'c1'").fetchone() == (1,)


def test_a_hold_commits_alone_and_the_rides_commit_together_a_moment_after_the_first(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    end = CallEnd("ok", 200, "complete", None, "0", 0, False, None, 1.0)

    def status(call_id: str) -> tuple[str, int]:
        return tuple(store.db.execute("SELECT status, forwarded FROM calls WHERE id = ?", (call_id,)).fetchone())

    async def main() -> None:
        key, _ = await store.create_key("k", None, False, 0.0)
        monkeypatch.setattr(batch, "RIDE_S", 1.0)  # longer than the steps below take, however busy the machine
        await store.begin_call(_start("c1", key.id), 86400)
        before = store.committer.batches
        store.mark_forwarded("c1")  # the request leaves: its mark rides
        await asyncio.sleep(0)
        assert store.committer.batches == before and status("c1") == ("pending", 0)
        settled = asyncio.ensure_future(store.finish_call("c1", end, 1.0, ride=True))  # the response went out
        await asyncio.sleep(0.01)
        assert status("c1") == ("pending", 0)  # riding
        await store.begin_call(_start("c2", key.id), 86400)  # the next call's hold does not take the rides along
        assert store.committer.batches == before + 1 and status("c1") == ("pending", 0)
        store.mark_forwarded("c2")
        await settled  # RIDE_S after c1's mark: c1's settlement and c2's mark, in one transaction
        assert store.committer.batches == before + 2
        assert status("c1") == ("ok", 1) and status("c2") == ("pending", 1)
        monkeypatch.setattr(batch, "RIDE_S", 0.01)
        before = store.committer.batches
        settled = asyncio.ensure_future(store.finish_call("c2", end, 1.0, ride=True))
        await asyncio.sleep(0.2)
        assert settled.done() and store.committer.batches == before + 1 and status("c2") == ("ok", 1)

    asyncio.run(main())


def test_a_mark_settled_in_its_own_transaction_takes_no_statement_and_survives_a_failed_batch(
    store: SQLiteStore,
) -> None:
    end = CallEnd("ok", 200, "complete", None, "0", 0, False, None, 1.0)
    statements: list[str] = []

    async def main() -> None:
        key, _ = await store.create_key("k", None, False, 0.0)
        await store.begin_call(_start("c1", key.id), 86400)
        await store.begin_call(_start("c2", key.id), 86400)
        store.db.set_trace_callback(statements.append)
        store.mark_forwarded("c1")
        # c1's answer is back before its mark is written (a retry after a busy lock, with several workers):
        # the mark and the settlement are in one transaction
        settled = store.committer.run(lambda: store._finish_call("c1", end, 1.0, False, False, False), ride=True)
        await settled
        await store.begin_call(_start("c3", key.id), 86400)
        assert not [s for s in statements if "forwarded = 1" in s]  # the settlement's update took the mark
        store.mark_forwarded("c2")
        store.committer.submit(lambda: store.db.execute("INSERT INTO no_such_table VALUES (1)"))
        await asyncio.sleep(0.05)  # the batch fails, is rolled back, and is run again one operation at a time

    asyncio.run(main())
    store.db.set_trace_callback(None)
    forwarded = dict(store.db.execute("SELECT id, forwarded FROM calls").fetchall())
    assert forwarded == {"c1": 1, "c2": 1, "c3": 0}
    assert tuple(store.db.execute("SELECT status FROM calls WHERE id = 'c1'").fetchone()) == ("ok",)


def test_forwarded_marks_of_many_calls_in_flight_are_all_written(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "_IDS_PER_UPDATE", 2)  # several statements for one transaction's marks

    statements: list[str] = []

    async def main() -> None:
        key, _ = await store.create_key("k", None, False, 0.0)
        for n in range(5):
            await store.begin_call(_start(f"c{n}", key.id), 86400)
        await store.begin_call(_start("c_next", key.id), 86400)
        store.db.set_trace_callback(statements.append)
        monkeypatch.setattr(batch, "RIDE_S", 0.01)
        for n in range(5):  # five calls leave within RIDE_S: one transaction writes their marks
            store.mark_forwarded(f"c{n}")
        await asyncio.sleep(0.2)

    asyncio.run(main())
    store.db.set_trace_callback(None)
    assert len([s for s in statements if "forwarded = 1" in s]) == 3  # two ids per statement
    assert statements.count("COMMIT") == 1
    forwarded = dict(store.db.execute("SELECT id, forwarded FROM calls").fetchall())
    assert forwarded == {"c0": 1, "c1": 1, "c2": 1, "c3": 1, "c4": 1, "c_next": 0}


def test_without_batching_a_forwarded_mark_commits_at_once(tmp_path: Path) -> None:
    naive = SQLiteStore(f"sqlite:///{tmp_path / 'n.db'}", 0.0, batch=False)

    async def main() -> None:
        key, _ = await naive.create_key("k", None, False, 0.0)
        await naive.begin_call(_start("c1", key.id), 86400)
        naive.mark_forwarded("c1")
        with contextlib.closing(sqlite3.connect(tmp_path / "n.db")) as other:  # committed, seen from outside
            assert other.execute("SELECT forwarded FROM calls WHERE id = 'c1'").fetchone() == (1,)
        await naive.close()

    asyncio.run(main())


def test_submit_logs_instead_of_raising(store: SQLiteStore, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        store.committer.submit(lambda: store.db.execute("INSERT INTO no_such_table VALUES (1)"))
        await asyncio.sleep(0.01)

    asyncio.run(main())
    assert "background store operation failed" in caplog.text


def test_a_batch_that_finds_the_write_lock_taken_does_not_block_the_loop(store: SQLiteStore, tmp_path: Path) -> None:
    """Another process (here: another connection) writing: the batch waits its turn while the loop runs on."""
    other = sqlite3.connect(tmp_path / "g.db", isolation_level=None)

    async def main() -> tuple[bool, int, list[object]]:
        key, _ = await store.create_key("k", None, False, 0.0)
        other.execute("BEGIN IMMEDIATE")  # the write lock, held by someone else
        holds = [asyncio.ensure_future(store.begin_call(_start(f"c{n}", key.id), 86400)) for n in range(3)]
        ticks = 0
        while store.committer.busy < 3:  # the loop keeps turning while the batch waits
            await asyncio.sleep(0)
            ticks += 1
        waiting = not any(h.done() for h in holds)
        late = asyncio.ensure_future(store.begin_call(_start("c_late", key.id), 86400))
        await asyncio.sleep(0.003)
        other.execute("COMMIT")
        results = await asyncio.gather(*holds, late)
        return waiting, ticks, [r.kind for r in results]

    try:
        waiting, ticks, kinds = asyncio.run(main())
    finally:
        other.close()
    assert waiting and ticks > 0
    assert kinds == ["held"] * 4
    # the three queued holds and the one that came while they waited committed together, once the lock was free
    assert asyncio.run(store.key_spend(store.db.execute("SELECT id FROM keys").fetchone()[0])) == (0, 4_000)
    assert (store.committer.batches, store.committer.operations) == (1, 4)


def test_closing_waits_for_the_write_lock_to_commit_what_is_queued(store: SQLiteStore, tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / "g.db", isolation_level=None, check_same_thread=False)

    async def main() -> None:
        key, _ = await store.create_key("k", None, False, 0.0)
        await store.begin_call(_start("c1", key.id), 86400)
        store.mark_forwarded("c1")  # queued, not committed
        other.execute("BEGIN IMMEDIATE")
        releaser = threading.Timer(0.1, lambda: other.execute("COMMIT"))  # the other writer finishes later
        releaser.start()
        await store.close()  # waits for the lock rather than leaving the mark behind
        releaser.join()

    try:
        asyncio.run(main())
        assert other.execute("SELECT forwarded FROM calls WHERE id = 'c1'").fetchone() == (1,)
    finally:
        other.close()


def test_a_riding_settlement_waits_for_the_next_forward_or_a_moment(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``finish_call(ride=True)``: it commits when the next call is forwarded, or after RIDE_S."""
    end = CallEnd("ok", 200, "complete", None, "0", 500, False, None, 1.0)

    async def main() -> tuple[bool, int, int]:
        key, _ = await store.create_key("k", None, False, 0.0)
        await store.begin_call(_start("c1", key.id), 86400)
        monkeypatch.setattr(batch, "RIDE_S", 5.0)
        before = store.committer.batches
        settled = asyncio.ensure_future(store.finish_call("c1", end, 1.0, ride=True))
        await asyncio.sleep(0.05)
        waiting = not settled.done()
        await store.begin_call(_start("c2", key.id), 86400)  # the next call's hold commits alone
        waiting = waiting and not settled.done()
        store.mark_forwarded("c2")  # it leaves: the settlement commits with its mark
        await settled
        shared = store.committer.batches - before
        monkeypatch.setattr(batch, "RIDE_S", 0.01)
        await store.finish_call("c2", end, 1.0, ride=True)  # nothing else comes: it commits a moment later
        return waiting, shared, store.committer.batches - before

    waiting, shared, total = asyncio.run(main())
    assert waiting and shared == 2 and total == 3
    assert asyncio.run(store.key_spend(store.db.execute("SELECT id FROM keys").fetchone()[0])) == (1_000, 0)


def test_at_concurrency_1_a_forwarded_mark_costs_no_statement_of_its_own(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next hold's transaction leaves the marks to the rides, where each takes its call's settlement update."""
    end = CallEnd("ok", 200, "complete", None, "0", 0, False, None, 1.0)
    statements: list[str] = []

    async def main() -> None:
        key, _ = await store.create_key("k", None, False, 0.0)
        monkeypatch.setattr(batch, "RIDE_S", 0.05)
        store.db.set_trace_callback(statements.append)
        settled = []
        for n in range(3):  # hold, forward, answer: one call after another
            await store.begin_call(_start(f"c{n}", key.id), 86400)
            store.mark_forwarded(f"c{n}")
            settled.append(asyncio.ensure_future(store.finish_call(f"c{n}", end, 1.0, ride=True)))
            await asyncio.sleep(0)
        await asyncio.gather(*settled)

    asyncio.run(main())
    store.db.set_trace_callback(None)
    assert not [s for s in statements if "SET forwarded = 1" in s]
    assert statements.count("COMMIT") == 4  # three holds, then the rides of all three calls
    rows = store.db.execute("SELECT id, status, forwarded FROM calls ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [("c0", "ok", 1), ("c1", "ok", 1), ("c2", "ok", 1)]
