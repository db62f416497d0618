"""Group commit: the writes of concurrent calls share one transaction, with no waiting when idle.

An operation someone waits for (``run``: a hold, a refusal, a lease renewal) is queued and a flush is
scheduled with ``loop.call_soon``: when the loop is idle the flush runs on its very next iteration (no timer),
and every such operation queued meanwhile by other requests joins the same transaction.

An operation nobody is in a hurry for rides: a settlement (``run(op, ride=True)``, made after the client has
its response) and anything ``submit``ted (a forwarded mark: nobody waits for it). Rides never lengthen a
transaction someone waits for; they commit together ``RIDE_S`` after the first of them. At concurrency 1 a
call's hold so commits alone, and the forwarded marks and settlements of the calls of the last 5 ms share one
transaction (docs/performance.md, stop 15: committing them whenever a call was forwarded, as from stop 11,
cost a transaction per call).

Operations report outcomes as result codes, so they do not raise in normal use; if one does, the batch
is rolled back and its operations are run one by one, so only the failing one reports an error.

The committer knows nothing of SQL: it is given the store's ``transaction`` context manager (BEGIN on
entry, COMMIT on a clean exit, ROLLBACK on an exception) and runs synchronous operations inside it.

When another process holds the database's write lock (several ``fairmeter serve`` workers on one SQLite
file), the transaction raises `LockBusy` on entry instead of waiting: the batch goes back to the head of
its queue and is tried again ``RETRY_S`` later, while the event loop goes on serving (a blocking wait would
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


# Rides (a settlement, a forwarded mark) commit together this long after the first of them. It is also how long a
# forwarded mark can wait for its commit (docs/architecture.md, Leases).
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
        self._queue: list[Op] = []  # someone waits for these
        self._rides: list[Op] = []  # nobody is in a hurry for these
        self._scheduled = False  # a flush of the queue is due on the loop's next iteration
        self._retrying_rides = False  # the rides found the write lock taken: a retry is scheduled
        self._riding: asyncio.TimerHandle | None = None  # the rides' deadline
        self.batches = 0
        self.operations = 0
        self.busy = 0  # attempts that found the write lock taken

    def run(self, op: Callable[[], T], ride: bool = False) -> asyncio.Future[T]:
        """Queue ``op``; the returned future resolves after the transaction holding it has committed.

        ``ride``: nobody is in a hurry for it (a settlement whose client already has its response): it commits
        with the rides, at most ``RIDE_S`` from now.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        if ride:
            self._ride((op, fut), loop)
        else:
            self._queue.append((op, fut))
            if not self.batch:
                self.flush(wait=True)
            elif not self._scheduled:
                self._scheduled = True
                loop.call_soon(self.flush)
        return fut

    def submit(self, op: Callable[[], Any]) -> None:
        """Queue ``op`` without waiting for its commit: it rides (see ``run``); failures are logged."""
        self._ride((op, None), asyncio.get_running_loop())

    def _ride(self, op: Op, loop: asyncio.AbstractEventLoop) -> None:
        self._rides.append(op)
        if not self.batch:
            self.flush_rides(wait=True)
        elif self._riding is None and not self._retrying_rides:
            self._riding = loop.call_later(RIDE_S, self.flush_rides)

    def flush(self, wait: bool = False) -> None:
        """Commit the operations someone waits for, queued now (scheduled by ``run``); ``wait=True`` (the naive
        mode) waits for another process's write lock instead of trying again later."""
        self._scheduled = False
        batch, self._queue = self._queue, []
        if batch and self._commit(batch, wait):
            self._queue = batch + self._queue
            self._scheduled = True
            asyncio.get_running_loop().call_later(RETRY_S, self.flush)

    def flush_rides(self, wait: bool = False) -> None:
        """Commit the rides queued now (``RIDE_S`` after the first, or at a retry)."""
        self._retrying_rides = False
        if self._riding is not None:
            self._riding.cancel()
            self._riding = None
        batch, self._rides = self._rides, []
        if batch and self._commit(batch, wait):
            self._rides = batch + self._rides
            self._retrying_rides = True
            asyncio.get_running_loop().call_later(RETRY_S, self.flush_rides)

    def drain(self) -> None:
        """Commit everything queued, waiting for another process's write lock (before the store closes)."""
        self.flush(wait=True)
        self.flush_rides(wait=True)

    def _commit(self, batch: list[Op], wait: bool) -> bool:
        """Run ``batch`` in one transaction and resolve its futures; True if the write lock was taken (nothing
        was done: the caller queues the batch again)."""
        try:
            results = self._run_batch(batch, wait)
        except LockBusy:  # another process is writing: try again soon, with whatever joins meanwhile
            self.busy += 1
            return True
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
        return False

    def _run_batch(self, batch: list[Op], wait: bool) -> list[tuple[asyncio.Future[Any] | None, bool, Any]]:
        """All operations in one transaction; on any exception the whole transaction is rolled back."""
        with self._transaction(wait):
            return [(fut, True, op()) for op, fut in batch]
