"""Group commit: the writes of concurrent calls share one transaction, with no waiting when idle.

An operation is queued and a flush is scheduled with ``loop.call_soon``: when the loop is idle the
flush runs on its very next iteration (no timer), and every operation queued meanwhile by other
requests joins the same transaction. Each operation runs inside its own SAVEPOINT, so a failing
one is rolled back alone and reports its exception to its own caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from fairmeter.store.sqlite import SQLiteStore

T = TypeVar("T")
log = logging.getLogger("fairmeter.store")


class GroupCommitter:
    """Runs store operations on the event loop thread, batched into shared transactions."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self._queue: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        self.batches = 0
        self.operations = 0

    def run(self, op: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``op``; the returned future resolves after the transaction holding it has committed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.append((op, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._queue = self._queue, []
        if not batch:
            return
        db = self.store.db
        results: list[tuple[asyncio.Future[Any], bool, Any]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            single = len(batch) == 1
            for op, fut in batch:
                if single:
                    try:
                        results.append((fut, True, op()))
                    except Exception as exc:
                        db.execute("ROLLBACK")
                        db.execute("BEGIN IMMEDIATE")
                        results.append((fut, False, exc))
                    continue
                db.execute("SAVEPOINT op")
                try:
                    value = op()
                except Exception as exc:
                    db.execute("ROLLBACK TO op")
                    db.execute("RELEASE op")
                    results.append((fut, False, exc))
                else:
                    db.execute("RELEASE op")
                    results.append((fut, True, value))
            db.execute("COMMIT")
        except Exception as exc:  # the commit itself failed: nothing in this batch is durable
            log.exception("group commit failed")
            if db.in_transaction:
                db.execute("ROLLBACK")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.batches += 1
        self.operations += len(batch)
        for fut, ok, value in results:
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
