"""Group commit: the writes of concurrent calls share one transaction, with no waiting when idle.

An operation is queued and a flush is scheduled with ``loop.call_soon``: when the loop is idle the
flush runs on its very next iteration (no timer), and every operation queued meanwhile by other
requests joins the same transaction. Operations report outcomes as result codes, so they do not
raise in normal use; if one does, the batch is rolled back and its operations are run one by one,
so only the failing one reports an error.
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

    def submit(self, op: Callable[[], Any]) -> None:
        """Queue ``op`` without waiting for its commit (it joins the next batch); failures are logged."""
        self.run(op).add_done_callback(_log_failure)

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._queue = self._queue, []
        if not batch:
            return
        try:
            results = self._run_batch(batch)
        except Exception:
            # One operation failed (they return result codes, so this is a bug or a database error):
            # the batch was rolled back; run each operation alone so only the failing one fails.
            log.exception("group commit of %d operations failed; retrying them one by one", len(batch))
            results = []
            for op, fut in batch:
                try:
                    results.extend(self._run_batch([(op, fut)]))
                except Exception as exc:
                    results.append((fut, False, exc))
        self.batches += 1
        self.operations += len(batch)
        for fut, ok, value in results:
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def _run_batch(
        self, batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]]
    ) -> list[tuple[asyncio.Future[Any], bool, Any]]:
        """All operations in one transaction; on any exception the whole transaction is rolled back."""
        db = self.store.db
        db.execute("BEGIN IMMEDIATE")
        try:
            results = [(fut, True, op()) for op, fut in batch]
            self.store.flush_credits()
            db.execute("COMMIT")
        except BaseException:
            self.store.discard_credits()
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return results


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("a background store operation failed", exc_info=fut.exception())
