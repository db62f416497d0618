"""Group commit: the writes of concurrent calls share one transaction, with no waiting when idle.

An operation is queued and a flush is scheduled with ``loop.call_soon``: when the loop is idle the
flush runs on its very next iteration (no timer), and every operation queued meanwhile by other
requests joins the same transaction. An operation nobody waits for (``submit``: the "forwarded" mark)
schedules no flush of its own; it rides with the next one, or commits after ``RIDE_S``; so does one whose
waiter is in no hurry (``run(op, ride=True)``: a settlement, made after the client has its response).
Operations report outcomes as result codes, so they do not raise in normal use; if one does, the batch
is rolled back and its operations are run one by one, so only the failing one reports an error.

The committer knows nothing of SQL: it is given the store's ``transaction`` context manager (BEGIN on
entry, COMMIT on a clean exit, ROLLBACK on an exception) and runs synchronous operations inside it.

When another process holds the database's write lock (several ``fairmeter serve`` workers on one SQLite
file), the transaction raises `LockBusy` on entry instead of waiting: the batch goes back to the head of
the queue and is tried again ``RETRY_S`` later, while the event loop goes on serving (a blocking wait would
stall every call of this process). Operations queued meanwhile join it, so a busy lock makes batches larger.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

T = TypeVar("T")
Op = tuple[Callable[[], Any], asyncio.Future[Any] | None]  # no future: nobody waits (``submit``)
log = logging.getLogger("fairmeter.store")


# An operation nobody waits for (``submit``), or nobody in a hurry (``run(ride=True)``), rides with the next
# batch someone waits for, or commits after this long: at concurrency 1 a call's "forwarded" mark and its
# settlement then share the next call's hold transaction instead of paying for one each.
RIDE_S = 0.005  # float-ok: seconds


# How long a batch that found the write lock taken waits before it tries again. uvloop's timers tick in
# whole milliseconds; a shorter wait polls on every loop iteration and costs more CPU than it saves.
RETRY_S = 0.001  # float-ok: seconds


class LockBusy(Exception):
    """Raised on entering a transaction when another connection holds the write lock; nothing was done."""


class GroupCommitter:
    """Runs store operations on the event loop thread, batched into shared transactions."""

    def __init__(self, transaction: Callable[[bool], AbstractContextManager[object]], batch: bool = True) -> None:
        self._transaction = transaction
        self.batch = batch  # False: every operation commits alone at once (the naive baseline of bench/ledger.py)
        self._queue: list[Op] = []
        self._scheduled = False
        self._riding: asyncio.TimerHandle | None = None
        self.batches = 0
        self.operations = 0
        self.busy = 0  # attempts that found the write lock taken

    def run(self, op: Callable[[], T], ride: bool = False) -> asyncio.Future[T]:
        """Queue ``op``; the returned future resolves after the transaction holding it has committed.

        ``ride``: schedule no flush of its own, as ``submit`` (a settlement whose client already has its
        response); it commits with the next batch, at most ``RIDE_S`` from now.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.append((op, fut))
        if not self.batch:
            self.flush(wait=True)
        elif ride:
            if not self._scheduled and self._riding is None:
                self._riding = loop.call_later(RIDE_S, self.flush)
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self.flush)
        return fut

    def submit(self, op: Callable[[], Any]) -> None:
        """Queue ``op`` without waiting for its commit: it joins the next batch, at the latest ``RIDE_S`` from
        now; failures are logged."""
        self._queue.append((op, None))
        if not self.batch:
            self.flush(wait=True)
        elif not self._scheduled and self._riding is None:
            self._riding = asyncio.get_running_loop().call_later(RIDE_S, self.flush)

    def flush(self, wait: bool = False) -> None:
        """Commit everything queued now (scheduled by ``run``); ``wait=True`` (before the store closes, and
        the naive mode) waits for another process's write lock instead of trying again later."""
        self._scheduled = False
        if self._riding is not None:
            self._riding.cancel()
            self._riding = None
        batch, self._queue = self._queue, []
        if not batch:
            return
        try:
            results = self._run_batch(batch, wait)
        except LockBusy:  # another process is writing: try again soon, with whatever joins meanwhile
            self.busy += 1
            self._queue = batch + self._queue
            self._scheduled = True
            asyncio.get_running_loop().call_later(RETRY_S, self.flush)
            return
        except Exception:
            # One operation failed (they return result codes, so this is a bug or a database error):
            # the batch was rolled back; run each operation alone so only the failing one fails.
            log.exception("group commit of %d operations failed; retrying them one by one", len(batch))
            results = []
            for op in batch:
                try:
                    results.extend(self._run_batch([op], True))
                except Exception as exc:
                    results.append((op[1], False, exc))
        self.batches += 1
        self.operations += len(batch)
        for fut, ok, value in results:
            if fut is None:  # submitted: nobody waits for it, so a failure is logged here
                if not ok:
                    log.error("a background store operation failed", exc_info=value)
            elif fut.done():
                continue
            elif ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def _run_batch(self, batch: list[Op], wait: bool) -> list[tuple[asyncio.Future[Any] | None, bool, Any]]:
        """All operations in one transaction; on any exception the whole transaction is rolled back."""
        with self._transaction(wait):
            return [(fut, True, op()) for op, fut in batch]
