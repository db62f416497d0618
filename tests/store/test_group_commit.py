"""Group commit: concurrent operations share one transaction; a failing one fails alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fairmeter.store.batch import GroupCommitter
from fairmeter.store.sqlite import SQLiteStore


def test_operations_queued_together_commit_in_one_batch_and_a_failure_stays_its_own(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'g.db'}", 0.0)
    committer = GroupCommitter(store)

    def make_key(name: str) -> str:
        return store.create_key(name, None, False, 0.0)[0].id

    def broken() -> None:
        store.db.execute("INSERT INTO no_such_table VALUES (1)")

    async def main() -> list[object]:
        futures = [committer.run(lambda n=n: make_key(f"k{n}")) for n in range(5)]  # type: ignore[misc]
        futures.insert(2, committer.run(broken))
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[2], Exception)
    assert all(isinstance(r, str) for i, r in enumerate(results) if i != 2)
    assert sorted(k.name for k in store.list_keys()) == [f"k{n}" for n in range(5)]
    # one batch for the first attempt (rolled back), then each operation alone
    assert committer.operations == 6
    assert not store.db.in_transaction


def test_an_idle_committer_flushes_on_the_next_loop_iteration(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'g.db'}", 0.0)
    committer = GroupCommitter(store)

    async def main() -> int:
        fut = committer.run(lambda: 7)
        await asyncio.sleep(0)  # one iteration: the flush scheduled with call_soon has run
        assert fut.done()
        return await fut

    assert asyncio.run(main()) == 7
    assert committer.batches == 1


def test_submit_logs_instead_of_raising(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'g.db'}", 0.0)
    committer = GroupCommitter(store)

    async def main() -> None:
        committer.submit(lambda: store.db.execute("INSERT INTO no_such_table VALUES (1)"))
        await asyncio.sleep(0.01)

    asyncio.run(main())
    assert "background store operation failed" in caplog.text
