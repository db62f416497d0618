"""SQLite backend of the `Store` protocol: one file, WAL, ``synchronous=NORMAL``.

Durability: with WAL and synchronous=NORMAL a committed transaction survives a crash of the
gateway process (the WAL is in the OS page cache), but the last transactions before a power loss
or kernel crash can be lost. That is the level chosen for the default backend; see
docs/architecture.md.

SQLite does its work in the calling thread and never waits on a network, so the coroutines here do
not yield. The hot-path writes (hold, settlement, refusal, replay, forwarded mark, lease renewal) are
queued on the group committer (`fairmeter.store.batch`), which runs many calls' operations in one
transaction; the ``_``-prefixed synchronous methods are those operations and run inside it. Keys and
reads run directly, each in its own short transaction or as a plain read.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

from fairmeter.ledger.explain import explain_payment
from fairmeter.ledger.funding import Allocation, BucketKind, Portion, Size
from fairmeter.ledger.model import (
    Account,
    Transfer,
    TransferKind,
    TransferState,
    check_hold,
    settlement_for,
    with_outcomes,
)
from fairmeter.ledger.plans import overage_only
from fairmeter.money import Nano
from fairmeter.record import record
from fairmeter.store.batch import GroupCommitter, LockBusy
from fairmeter.store.funding_sql import (
    OVERAGE_PREFIX,
    UNREAD_ACCOUNTS,
    FundingHold,
    HeldFunding,
    Payer,
    Writes,
    funding_text,
    held_periods,
    hold_funding,
    load_payer,
    plan_settlement,
    settle_funding,
    sqlite_part_sql,
)
from fairmeter.store.migrations import apply_migrations
from fairmeter.store.protocol import Books, CallPage, LapsedCall
from fairmeter.store.records import (
    DEFAULT_ORG,
    CallEnd,
    CallStart,
    HoldOutcome,
    KeyRecord,
    StoredResponse,
    hash_key,
    key_account,
    new_key,
    provider_account,
)
from fairmeter.store.sql import SQLiteTx, Tx, row_chunks, run_now, to_sqlite, values_sql

CHECKPOINT_INTERVAL_S = 0.5
BUSY_TIMEOUT_S = 10.0  # float-ok: seconds; how long anything but a group commit waits for another process's lock
BUSY_POLL_S = 0.001  # float-ok: seconds; how often such a wait tries again
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
T = TypeVar("T")
log = logging.getLogger("fairmeter.store")

# sqlite3 binds int, float, str and bytearray parameters directly and sends anything else, None included,
# through its adapter protocol, which for None fails two attribute lookups before binding NULL: a few
# hundred nanoseconds for each of the dozen NULLs a call writes. An adapter registered for None is found at
# once (a dictionary's ``get`` of the value itself returns None, bound as NULL).
_NO_ADAPTER: dict[None, None] = {}
sqlite3.register_adapter(type(None), _NO_ADAPTER.get)
# A resolution's transfer kind, as a plain string: sqlite3 binds a str subclass (an enum member) through that
# protocol too.
_VOID, _EXPIRE, _POST = TransferKind.VOID.value, TransferKind.EXPIRE.value, TransferKind.POST.value


def sqlite_path(database_url: str) -> str:
    """``sqlite:///relative/or/absolute.db`` → a filesystem path (``sqlite:///:memory:`` allowed)."""
    if not database_url.startswith("sqlite:///"):
        raise ValueError(f"not a SQLite URL: {database_url!r} (expected sqlite:///PATH)")
    return database_url[len("sqlite:///") :]


class SQLiteStore:
    """The ledger, keys and call records in one SQLite file (implements `fairmeter.store.protocol.Store`)."""

    def __init__(self, database_url: str, now: float, batch: bool = True) -> None:
        path = sqlite_path(database_url)
        self.url = database_url
        self.path = path
        self._checkpointer: threading.Thread | None = None
        self._deferred: dict[str, list[Nano]] = {}  # account → [debits pending, posted, credits pending, posted]
        self._deferred_periods: dict[tuple[str, str, float], list[Nano]] = {}  # (payer, what, start) → [used, held]
        self._stop = threading.Event()
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        # The hot path's statements run on one cursor (each result is read before the next statement): a
        # `Connection.execute` makes a cursor per statement.
        self._cur = self.db.cursor()
        self._tx = SQLiteTx(self._cur)  # the shared SQL's view of this connection
        # Small pages for a new database: a call dirties about a dozen pages (rows and index entries),
        # and every dirty page is written whole to the WAL and again by the checkpoint. 1 KiB pages cut
        # the ledger's CPU per call by about a quarter against the 4 KiB default (docs/performance.md).
        # No effect on an existing database.
        self.db.execute("PRAGMA page_size=1024")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        self.db.execute("PRAGMA foreign_keys=ON")
        apply_migrations(self.db, now)
        # From here on SQLite's busy handler never sleeps on this connection: a group commit that finds the
        # write lock taken tries again later on the event loop (`LockBusy`), and the other statements wait
        # in `_execute` (a toggle of busy_timeout around each group commit cost two statements per batch).
        self.db.execute("PRAGMA busy_timeout=0")
        # Payers (plan and switches) as last read; valid while no other connection has committed
        # (``PRAGMA data_version``) and no change went through ``transaction`` outside a group commit.
        self._payers: dict[str, Payer] = {}
        self._overage_payers: dict[str, tuple[Payer, bool]] = {}  # `_overage_only`, by the payer object it read
        self._data_version = -1
        self.committer = GroupCommitter(self._batch_transaction, batch)
        # Calls this process held: their settlement is planned before its statements, and resolves the funding
        # holds by id, in the spend leg's statement.
        self._held: dict[str, _Held] = {}
        # Forwarded marks not yet written, and the calls settled by the transaction now open (`_mark_forwarded`).
        self._forwarded: set[str] = set()
        self._marks_due = False  # the open transaction writes the marks (it runs `_write_marks`)
        self._settling: set[str] = set()

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Move WAL checkpoints off the event loop (idempotent).

        SQLite's automatic checkpoint runs inside a COMMIT, on the event loop, and fsyncs: a stall of
        milliseconds every few dozen calls. A serving process turns it off and checkpoints from a thread
        with its own connection instead (PASSIVE: it never blocks writers).
        """
        if self._checkpointer is not None or self.path == ":memory:":
            return
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self._stop.clear()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, args=(CHECKPOINT_INTERVAL_S,), name="fairmeter-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_loop(self, interval_s: float) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        try:
            while not self._stop.wait(interval_s):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    log.exception("WAL checkpoint failed")
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            conn.close()

    async def close(self) -> None:
        """Commit what is still queued (forwarded marks, riding settlements), stop the checkpointer, close."""
        self.committer.drain()
        if self._checkpointer is not None:
            self._stop.set()
            self._checkpointer.join(timeout=10)
            self._checkpointer = None
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE … COMMIT, ROLLBACK on error), for anything but the hot path:
        it may change a payer, so the payers read so far are forgotten."""
        self._payers.clear()
        with self._batch_transaction(wait=True) as db:
            yield db
        self._payers.clear()

    @contextmanager
    def _batch_transaction(self, wait: bool) -> Iterator[sqlite3.Connection]:
        """A group commit's transaction; the payers read so far stay valid unless another connection wrote.

        ``wait=False`` (a group commit): if another connection holds the write lock, raise `LockBusy`
        at once rather than let SQLite's busy handler sleep on the event-loop thread.
        """
        cur = self._cur  # the hot path's cursor: no cursor is made for these statements
        self._execute("BEGIN IMMEDIATE", wait=wait, cur=cur)
        try:
            version = cur.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:  # another process committed (a CLI command, say)
                self._payers.clear()
                self._data_version = version
            yield self.db
            marked = self._mark_forwarded(self._marks_due)
            self._flush_deferred()
        except BaseException:
            self._deferred.clear()
            self._deferred_periods.clear()
            self._settling.clear()
            if self.db.in_transaction:  # some errors (a full disk) end the transaction themselves
                self.db.execute("ROLLBACK")
            raise
        finally:
            self._marks_due = False
        cur.execute("COMMIT")
        self._forwarded -= marked

    def _execute(
        self, sql: str, args: tuple[object, ...] = (), wait: bool = True, cur: sqlite3.Cursor | None = None
    ) -> sqlite3.Cursor:
        """A statement that may find another connection's lock: ``wait`` tries again every ``BUSY_POLL_S`` for
        up to ``BUSY_TIMEOUT_S`` (what SQLite's busy handler would do), else raises `LockBusy` at once. ``cur``:
        run it on that cursor (else on a new one, which a caller may iterate while it runs other statements)."""
        deadline = None
        while True:
            try:
                return (cur or self.db).execute(sql, args)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in _BUSY:
                    raise
                if not wait:
                    raise LockBusy(str(exc)) from None
                deadline = deadline or time.monotonic() + BUSY_TIMEOUT_S
                if time.monotonic() > deadline:
                    raise
                time.sleep(BUSY_POLL_S)

    def _payer(self, payer_id: str) -> Payer | None:
        """The payer with its plan and switches, read once per change (the write lock is held: see above)."""
        payer = self._payers.get(payer_id)
        if payer is None:
            payer = run_now(load_payer(self._tx, payer_id, lock=False))
            if payer is not None:
                self._payers[payer_id] = payer
        return payer

    def _credit(self, account: str, pending: Nano, posted: Nano) -> None:
        """Queue a change to a provider account's credits, written once per transaction (``_defer``)."""
        self._defer(account, (0, 0, pending, posted))

    def _defer(self, account: str, deltas: tuple[Nano, Nano, Nano, Nano] | list[Nano]) -> None:
        """Queue a change to an account that no decision reads, written once per transaction with the batch's sum.

        Every call credits its provider's account, and a payer's overage or subscription account takes every
        call the payer's overage or windows pay; writing such a hot row once per transaction saves two
        statements per call. None of them carries a cap: overage is capped by its period counter and a
        subscription by its window counters, which are written at once, so nothing in the transaction reads
        these balances before they are written.
        """
        row = self._deferred.get(account)
        if row is None:
            self._deferred[account] = list(deltas)
        else:
            for i, d in enumerate(deltas):
                row[i] += d

    def _defer_period(self, key: tuple[str, str, float], used: Nano, held: Nano) -> None:
        """Queue a change to a period counter that no cap reads (see `_defer_unread`)."""
        row = self._deferred_periods.get(key)
        if row is None:
            self._deferred_periods[key] = [used, held]
        else:
            row[0] += used
            row[1] += held

    def _overage_only(self, payer: Payer) -> bool:
        """`overage_only` of the payer's plan and switches, once per payer as read."""
        fast = self._overage_payers.get(payer.id)
        if fast is None or fast[0] is not payer:
            fast = self._overage_payers[payer.id] = (payer, overage_only(payer.plan, payer.switches))
        return fast[1]

    def _defer_unread(self, writes: Writes, payer: Payer | None) -> Writes:
        """Move the funding writes' overage and subscription accounts to the once-per-transaction sums, and the
        payer's spill and overage period counters when no cap reads them (``load_funding`` reads a period's
        counter only to check that period's cap; ``payer`` None: not known here, so nothing is moved)."""
        accounts = writes.accounts
        for account in tuple(accounts):
            if account.startswith(UNREAD_ACCOUNTS):
                self._defer(account, accounts.pop(account))
        if payer is not None and writes.periods:
            caps = {"spill": payer.switches.spill_cap, "overage": payer.switches.overage_cap}
            for key in [k for k in writes.periods if caps.get(k[1], 0) is None]:
                self._defer_period(key, *writes.periods.pop(key))
        return writes

    def _mark_forwarded(self, write: bool) -> set[str]:
        """Write the forwarded marks queued since the last commit (``write``: in the rides' transaction, see
        `mark_forwarded`), in one statement, before COMMIT; returns the calls whose mark is now in this transaction
        (forgotten once it commits, kept if it rolls back).

        A call settled in this same transaction takes its mark in its settlement's update instead (its answer
        came back before the mark was written): at concurrency 1 every mark is so written.
        """
        settled, self._settling = self._settling & self._forwarded, set()
        if not write:
            return settled
        todo = list(self._forwarded - settled)
        for i in range(0, len(todo), _IDS_PER_UPDATE):
            ids = todo[i : i + _IDS_PER_UPDATE]
            self._cur.execute(f"UPDATE calls SET forwarded = 1 WHERE id IN ({', '.join('?' * len(ids))})", ids)
        return settled.union(todo)

    def _flush_writes(self, writes: Writes) -> None:
        """Write what the funding writes hold (often nothing, once the unread accounts are deferred)."""
        if not writes.empty:
            run_now(writes.flush(self._tx))

    def _flush_deferred(self) -> None:
        """Write the queued account and period changes, in the statements the funding writes use for them (accounts
        first); runs before COMMIT."""
        accounts, periods = self._deferred, self._deferred_periods
        if accounts:
            self._deferred = {}  # start new sums
            self._write_rows("acc", [(account, *row) for account, row in accounts.items() if any(row)])
        if periods:
            self._deferred_periods = {}
            self._write_rows("per", [(*key, used, held) for key, (used, held) in periods.items() if used or held])

    def _write_rows(self, part: str, rows: list[tuple[object, ...]]) -> None:
        """Rows of one part of the funding writes, many per statement."""
        for chunk in row_chunks(rows):
            self._cur.execute(sqlite_part_sql(part, len(chunk)), list(chain.from_iterable(chunk)))

    # ---- keys (each its own short transaction) --------------------------------------------------

    async def create_key(self, name: str, max_spend: Nano | None, admin: bool, now: float) -> tuple[KeyRecord, str]:
        """Create a key and its ledger account; returns the record and the secret (stored only as a hash)."""
        key, secret = new_key(name, max_spend, admin, now)
        with self.transaction() as db:
            db.execute(
                "INSERT INTO keys (id, name, key_hash, key_prefix, admin, max_spend_nano, created_at, org_id,"
                " service, payer_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key.id, name, hash_key(secret), key.prefix, int(admin), max_spend, now, DEFAULT_ORG, name,
                 key.payer_id),
            )  # fmt: skip
            db.execute("INSERT INTO accounts (id, cap_nano) VALUES (?, ?)", (key.account, max_spend))
        return key, secret

    async def key_by_hash(self, digest: str) -> KeyRecord | None:
        row = self._execute("SELECT * FROM keys WHERE key_hash = ?", (digest,)).fetchone()
        return _key(row) if row else None

    async def list_keys(self) -> list[KeyRecord]:
        return [_key(r) for r in self._execute("SELECT * FROM keys ORDER BY created_at, id")]

    async def revoke_key(self, key_id: str, now: float) -> bool:
        with self.transaction() as db:
            cur = db.execute("UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, key_id))
        return cur.rowcount == 1

    async def key_spend(self, key_id: str) -> tuple[Nano, Nano]:
        row = self._execute(
            "SELECT debits_posted, debits_pending FROM accounts WHERE id = ?", (key_account(key_id),)
        ).fetchone()
        return (row[0], row[1]) if row else (0, 0)

    # ---- the hot path: queued on the group committer ----------------------------------------------

    async def begin_call(self, call: CallStart, idempotency_ttl_s: int) -> HoldOutcome:
        """Idempotency check, then the hold of ``call.reserved`` against the key's cap, atomically."""
        return await self.committer.run(lambda: self._begin_call(call, idempotency_ttl_s))

    def mark_forwarded(self, call_id: str) -> None:
        """Not waited for (see docs/architecture.md, Leases): the call is leaving for its provider; the mark rides
        with the settlements, and commits at most ``batch.RIDE_S`` from now.

        The marks are written at the end of the rides' transaction, all in one statement (`_mark_forwarded`), or
        in the settlement's own update when the call is settled in it; the operation queued here only makes sure
        that such a transaction comes. A hold's transaction does not write them (one statement less on a call's
        path).
        """
        first = not self._forwarded
        self._forwarded.add(call_id)  # before the submit: without batching, it commits at once
        if first:
            self.committer.submit(self._write_marks)

    def _write_marks(self) -> None:
        """The operation `mark_forwarded` queues: the transaction it runs in writes the marks queued."""
        self._marks_due = True

    async def finish_call(
        self,
        call_id: str,
        end: CallEnd,
        now: float,
        *,
        void: bool = False,
        expired: bool = False,
        needs_reconciliation: bool = False,
        ride: bool = False,
    ) -> Nano:
        """Settle or void a pending call; returns the overrun posted (0 normally). See `_finish_call`."""
        return await self.committer.run(
            lambda: self._finish_call(call_id, end, now, void, expired, needs_reconciliation), ride=ride
        )

    async def record_refusal(self, call: CallStart, status: str, code: str, message: str, ended_at: float) -> None:
        await self.committer.run(lambda: self._record_refusal(call, status, code, message, ended_at))

    async def record_replay(self, call: CallStart, original: str, ended_at: float) -> None:
        await self.committer.run(lambda: self._record_replay(call, original, ended_at))

    async def renew_leases(self, owner: str, until: float) -> int:
        """Extend the leases of this process's pending calls (one statement for all of them)."""
        return await self.committer.run(lambda: self._renew_leases(owner, until))

    def _record_refusal(self, call: CallStart, status: str, code: str, message: str, ended_at: float) -> None:
        """A call that never got a hold (bad input, wrong key, unknown model, over budget).

        ``reserved_nano`` records the hold the call asked for (its W, when known); no transfer exists.
        """
        self.db.execute(
            "INSERT INTO calls (id, key_id, provider, api, model, stream, status, usage_status, cost_usd,"
            " reserved_nano, idempotency_key, error_code, message, started_at, ended_at, prices_json, price_source)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 'error', NULL, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                call.id, call.key_id, call.provider, call.api, call.model, int(call.stream), status,
                call.reserved, call.idempotency_key, code, message, call.started_at, ended_at,
                call.prices_json, call.price_source,
            ),
        )  # fmt: skip

    def _begin_call(self, call: CallStart, ttl_s: int) -> HoldOutcome:
        db = self._cur
        if call.key_id is None:
            raise ValueError(f"call {call.id}: a hold needs a key")
        account, provider = key_account(call.key_id), provider_account(call.provider)
        if call.idempotency_key is not None:
            row = db.execute(
                "SELECT call_id, state, created_at FROM idempotency WHERE key_id = ? AND idem_key = ?",
                (call.key_id, call.idempotency_key),
            ).fetchone()
            if row is not None and row["created_at"] > call.started_at - ttl_s:
                if row["state"] == "pending":
                    return HoldOutcome("in_use", other_call_id=row["call_id"])
                if row["state"] == "settled":
                    return HoldOutcome(
                        "replay", other_call_id=row["call_id"], stored=self._stored_response(row["call_id"])
                    )
            db.execute(
                "INSERT OR REPLACE INTO idempotency (key_id, idem_key, call_id, state, created_at)"
                " VALUES (?, ?, ?, 'pending', ?)",
                (call.key_id, call.idempotency_key, call.id, call.started_at),
            )
        funded = call.reserved if call.payer_id is not None else 0  # the funding leg credits the key W
        cur = db.execute(
            "UPDATE accounts SET debits_pending = debits_pending + ?1, credits_pending = credits_pending + ?3"
            " WHERE id = ?2 AND (cap_nano IS NULL OR debits_posted + debits_pending + ?1 <= cap_nano)",
            (call.reserved, account, funded),
        )
        if cur.rowcount == 0:
            return self._refused(call, account)
        funding_json = None
        moved: list[TransferRow] = []
        fh: FundingHold | None = None
        payer = self._payer(call.payer_id) if call.payer_id is not None else None
        overage = payer is not None and call.reserved > 0 and self._overage_only(payer)
        if payer is not None and overage:  # the funding leg without reads or an allocation: all of W on overage
            starts = held_periods(payer.switches, call.started_at)
            funding_json = funding_text([[_OVERAGE_KIND, _OVERAGE_KIND, call.reserved]], [], *starts)
            bucket = OVERAGE_PREFIX + payer.id
            self._defer(bucket, (call.reserved, 0, 0, 0))
            self._defer_period((payer.id, "overage", starts[1]), 0, call.reserved)
            moved.append(
                (call.id, "hold", bucket, account, call.reserved, None, "pending", None, call.started_at, _OVERAGE_KIND)
            )
        elif call.payer_id is not None:
            size = Size(call.reserved, call.tokens)
            tx = self._tx
            fh = run_now(
                hold_funding(
                    tx,
                    call.id,
                    call.payer_id,
                    account,
                    size,
                    call.started_at,
                    credit_key=False,
                    flush=False,
                    payer=payer,
                )
            )
            if fh.refusal is not None:
                db.execute(
                    "UPDATE accounts SET debits_pending = debits_pending - ?1, credits_pending = credits_pending - ?1"
                    " WHERE id = ?2",
                    (call.reserved, account),
                )
                self._free_idempotency(call)
                return fh.refused()
            assert fh.held is not None and fh.writes is not None
            moved = _funding_transfers(fh.writes)
            self._flush_writes(self._defer_unread(fh.writes, payer))
            funding_json = fh.json
        self._credit(provider, call.reserved, 0)
        # The funding holds and then the spend leg's hold, in one statement: the hold is the last row. Rows of one
        # transaction take consecutive ids (a rowid table takes the largest id + 1, and no row is ever deleted),
        # so the funding holds' are the ids just before the hold's.
        moved.append((call.id, "hold", account, provider, call.reserved, None, "pending", None, call.started_at, None))
        hold = self._insert_transfers(moved)
        if payer is not None and overage:
            self._held[call.id] = _Held(payer.id, None, account, {}, (call.reserved, hold - 1, *starts))
        elif call.payer_id is not None and fh is not None and fh.held is not None:
            first = hold - len(moved) + 1
            ids = {r[2]: (first + i, r[9]) for i, r in enumerate(moved[:-1])}
            self._held[call.id] = _Held(call.payer_id, fh.held, account, ids)
        db.execute(
            "INSERT INTO calls (id, key_id, provider, api, model, stream, status, reserved_nano, estimate_nano,"
            " prices_json, price_source, idempotency_key, hold_id, lease_owner, lease_expires_at, started_at,"
            " payer_id, funding_json) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                call.id, call.key_id, call.provider, call.api, call.model, int(call.stream), call.reserved,
                call.estimate, call.prices_json, call.price_source, call.idempotency_key, hold,
                call.lease_owner, call.lease_expires_at, call.started_at, call.payer_id, funding_json,
            ),
        )  # fmt: skip
        return HoldOutcome("held")

    def _refused(self, call: CallStart, account: str) -> HoldOutcome:
        """The hold did not fit under the cap: say by how much, and free the idempotency key again."""
        row = self.db.execute(
            "SELECT cap_nano, debits_posted, debits_pending FROM accounts WHERE id = ?", (account,)
        ).fetchone()
        if row is None:
            raise LookupError(f"no ledger account {account}")
        refused = check_hold(row[0], row[1], row[2], call.reserved)
        assert refused is not None
        self._free_idempotency(call)
        return HoldOutcome("refused", refused=refused)

    def _free_idempotency(self, call: CallStart) -> None:
        """A refused call leaves its idempotency key free for a retry."""
        if call.idempotency_key is not None:
            self.db.execute(
                "DELETE FROM idempotency WHERE key_id = ? AND idem_key = ? AND call_id = ?",
                (call.key_id, call.idempotency_key, call.id),
            )

    def _record_replay(self, call: CallStart, original: str, ended_at: float) -> None:
        self.db.execute(
            "INSERT INTO calls (id, key_id, provider, api, model, stream, status, usage_status, cost_usd,"
            " idempotency_key, replay_of, message, started_at, ended_at)"
            " VALUES (?, ?, ?, ?, ?, ?, 'ok', 'complete', '0', ?, ?, ?, ?, ?)",
            (
                call.id, call.key_id, call.provider, call.api, call.model, int(call.stream),
                call.idempotency_key, original,
                f"repeat of call {original} (same Idempotency-Key): stored response returned, nothing charged",
                call.started_at, ended_at,
            ),
        )  # fmt: skip

    def _finish_call(
        self, call_id: str, end: CallEnd, now: float, void: bool, expired: bool, needs_reconciliation: bool
    ) -> Nano:
        """Resolve a pending hold: post ``end.billed`` and release the rest, or void it (cost 0).

        ``expired`` marks a resolution by lease lapse (transfer kind ``expire``). Returns the overrun
        posted (0 normally). A call that is no longer pending is left as it is (a guarded UPDATE, so
        two resolutions of one call can never both apply).
        """
        db = self._cur
        actual = 0 if void else end.billed
        # A call this process held: its funding settlement is planned first, so the call's record takes the
        # explanation in the same update (else it is settled after, from the record's funding hold).
        planned: Writes | None = None
        here = self._held.pop(call_id, None)
        payer = self._payers.get(here.payer_id) if here is not None else None  # as this transaction knows it
        overage, here_payer = None, here.payer_id if here is not None else ""
        if here is not None and here.overage is not None:
            if payer is not None and self._overage_only(payer) and (void or actual <= here.overage[0]):
                overage = here.overage  # settled below without a plan: all of the cost on overage
            here = None  # else settled from the record's funding hold, as a call another process held
        elif here is not None and here.funding is not None:
            planned, done, _, _ = run_now(
                plan_settlement(self._tx, call_id, here.payer_id, here.account, here.funding, Size(actual, end.tokens),
                                now, void=void, credit_key=False)
            )  # fmt: skip
            if done is None:
                planned = None
        paid = planned.call if planned is not None else None
        if overage is not None:  # as `plan_settlement` writes a draw of ``actual`` on that one portion
            portions: list[list[object]] = [[_OVERAGE_KIND, _OVERAGE_KIND, actual]] if actual else []
            paid_text = funding_text(portions, [], *overage[2:], 0)
            paid = (call_id, paid_text, explain_payment(_on_overage(actual), (), {}), 0)
        forwarded = call_id in self._forwarded
        if forwarded:
            self._settling.add(call_id)
        row = db.execute(
            "UPDATE calls SET status = ?1, upstream_status = ?2, usage_status = ?3, usage_json = ?4, cost_usd = ?5,"
            " billed_nano = ?6, estimated = ?7, breakdown_json = ?8, ended_at = ?9, message = ?10,"
            " overrun_nano = MAX(0, ?6 - reserved_nano),"
            " needs_reconciliation = (?11 OR ?6 > reserved_nano), lease_expires_at = NULL,"
            " prices_json = COALESCE(?13, prices_json), price_source = COALESCE(?14, price_source),"
            " paid_json = COALESCE(?15, paid_json), explanation = COALESCE(?16, explanation),"
            " forwarded = MAX(forwarded, ?17)"
            " WHERE id = ?12 AND status = 'pending'"
            " RETURNING key_id, provider, hold_id, reserved_nano, idempotency_key, payer_id, funding_json",
            (
                end.status, end.upstream_status, end.usage_status, end.usage_json, end.cost_usd, actual,
                int(end.estimated), end.breakdown_json, end.ended_at, end.message, int(needs_reconciliation),
                call_id, end.prices_json, end.price_source, paid[1] if paid else None, paid[2] if paid else None,
                int(forwarded),
            ),
        ).fetchone()  # fmt: skip
        if row is None:
            return 0
        held, hold_id = row["reserved_nano"], row["hold_id"]
        debit, credit = key_account(row["key_id"]), provider_account(row["provider"])
        split = settlement_for(held, actual)
        kind = _VOID if void else _EXPIRE if expired else _POST
        # The spend hold's resolution references it (the funding holds get theirs from the funding writes below); no
        # transfer is ever updated (`ledger.model`).
        moved: list[TransferRow] = [(call_id, kind, debit, credit, split.posted, hold_id, "posted", None, now, None)]
        if split.overrun:
            over = "cost above hold"
            moved.append((call_id, "overrun", debit, credit, split.overrun, hold_id, "posted", over, now, None))
        if planned is not None and here is not None:  # the funding holds' resolutions, in the same statement
            for _, bucket_account, key, drawn, at in planned.resolutions:  # as funding_sql.resolve_sql writes them
                ref, bucket = here.hold_ids[bucket_account]
                how = _POST if drawn else _VOID
                moved.append((call_id, how, bucket_account, key, drawn, ref, "posted", None, at, bucket))
            planned.resolutions = []
        elif overage is not None:
            how, bucket_account = _POST if actual else _VOID, OVERAGE_PREFIX + here_payer
            moved.append((call_id, how, bucket_account, debit, actual, overage[1], "posted", None, now, _OVERAGE_KIND))
        self._insert_transfers(moved)
        funded = row["funding_json"] is not None  # the funding leg credits the key what the spend leg posts
        db.execute(
            "UPDATE accounts SET debits_pending = debits_pending - ?1, debits_posted = debits_posted + ?2,"
            " credits_pending = credits_pending - ?4, credits_posted = credits_posted + ?5 WHERE id = ?3",
            (held, actual, debit, held if funded else 0, actual if funded else 0),
        )
        self._credit(credit, -held, actual)
        if planned is not None:
            planned.call = None  # already in the update above
            self._flush_writes(self._defer_unread(planned, payer))
        elif overage is not None:
            self._defer(OVERAGE_PREFIX + here_payer, (-overage[0], actual, 0, 0))
            self._defer_period((here_payer, "overage", overage[3]), actual, -overage[0])
        elif row["funding_json"] is not None:
            self._settle_funding(
                call_id, row["payer_id"], debit, row["funding_json"], Size(actual, end.tokens), now, void
            )
        if row["idempotency_key"] is not None:
            self._settle_idempotency(call_id, row["key_id"], row["idempotency_key"], end, void)
        return split.overrun

    def _insert_transfers(self, rows: list[TransferRow]) -> int:
        """Insert transfers, many rows per statement; returns the id of the last."""
        last = 0
        for chunk in row_chunks(rows):
            sql = to_sqlite(values_sql(_INSERT_TRANSFERS, len(chunk[0]), len(chunk)))
            last = self._cur.execute(sql, list(chain.from_iterable(chunk))).lastrowid or 0
        return last

    def _settle_funding(
        self, call_id: str, payer_id: str, account: str, held: str, actual: Size, now: float, void: bool
    ) -> None:
        """Draw the cost from the buckets that held it, in burn order; record who paid and why."""
        # the settlement also writes the call's paid_json and explanation
        run_now(settle_funding(self._tx, call_id, payer_id, account, held, actual, now, void=void, credit_key=False))

    def _settle_idempotency(self, call_id: str, key_id: str, idem_key: str, end: CallEnd, void: bool) -> None:
        """A voided call frees its idempotency key; a settled one keeps its response for replays."""
        self.db.execute(
            "UPDATE idempotency SET state = ? WHERE key_id = ? AND idem_key = ? AND call_id = ?",
            ("voided" if void else "settled", key_id, idem_key, call_id),
        )
        if end.stored_response is not None and not void:
            sr = end.stored_response
            self.db.execute(
                "INSERT OR REPLACE INTO stored_responses (call_id, status, headers_json, body, stream)"
                " VALUES (?, ?, ?, ?, ?)",
                (call_id, sr.status, json.dumps(sr.headers), sr.body, int(sr.stream)),
            )

    def _stored_response(self, call_id: str) -> StoredResponse | None:
        row = self.db.execute("SELECT * FROM stored_responses WHERE call_id = ?", (call_id,)).fetchone()
        if row is None:
            return None
        headers = [(str(k), str(v)) for k, v in json.loads(row["headers_json"])]
        return StoredResponse(row["status"], headers, bytes(row["body"]), bool(row["stream"]))

    def _renew_leases(self, owner: str, until: float) -> int:
        return self.db.execute(
            "UPDATE calls SET lease_expires_at = ? WHERE status = 'pending' AND lease_owner = ?", (until, owner)
        ).rowcount

    # ---- leases and reads (plain reads, no transaction) -----------------------------------------

    async def lapsed_calls(self, now: float) -> list[LapsedCall]:
        return [
            LapsedCall(r[0], bool(r[1]), r[2])
            for r in self._execute(
                "SELECT id, forwarded, estimate_nano FROM calls WHERE status = 'pending' AND lease_expires_at < ?",
                (now,),
            )
        ]

    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        row = self._execute("SELECT * FROM calls WHERE id = ?", (call_id,)).fetchone()
        return dict(row) if row else None

    async def list_calls(self, page: CallPage) -> list[dict[str, Any]]:
        """Calls newest first; ``page.cursor`` is the (started_at, id) of the last row of the previous page."""
        where: list[str] = []
        args: list[Any] = []
        for column, op, value in (
            ("key_id", "=", page.key_id),
            ("started_at", ">=", page.since),
            ("started_at", "<", page.until),
            ("status", "=", page.status),
        ):
            if value is not None:
                where.append(f"{column} {op} ?")
                args.append(value)
        if page.cursor is not None:
            where.append("(started_at < ? OR (started_at = ? AND id < ?))")
            args.extend([page.cursor[0], page.cursor[0], page.cursor[1]])
        sql = "SELECT * FROM calls"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at DESC, id DESC LIMIT ?"
        args.append(page.limit)
        return [dict(r) for r in self._execute(sql, tuple(args))]

    async def accounts(self) -> list[Account]:
        return self._accounts(self.db.cursor())

    async def transfers(self) -> list[Transfer]:
        return self._transfers(self.db.cursor())

    async def pending_count(self) -> int:
        """Calls whose hold is still pending (in flight, or lapsed and not yet resolved)."""
        return self._pending_count(self.db.cursor())

    async def books(self) -> Books:
        """One read transaction: in WAL mode every read of it sees the database as of its first read."""
        cur = self.db.cursor()
        self._execute("BEGIN", cur=cur)  # deferred: a read transaction, which takes no lock from the writers
        try:
            return Books(self._accounts(cur), self._transfers(cur), self._pending_count(cur), self._reconciliation(cur))
        finally:
            cur.execute("COMMIT")

    def _accounts(self, cur: sqlite3.Cursor) -> list[Account]:
        return [
            Account(r[0], r[1], r[2], r[3], r[4], r[5])
            for r in self._execute(
                "SELECT id, cap_nano, debits_pending, debits_posted, credits_pending, credits_posted FROM accounts",
                cur=cur,
            ).fetchall()
        ]

    def _transfers(self, cur: sqlite3.Cursor) -> list[Transfer]:
        return with_outcomes(
            Transfer(r[0], r[1], TransferKind(r[2]), r[3], r[4], r[5], r[6], TransferState(r[7]))
            for r in self._execute(
                "SELECT id, call_id, kind, debit_account, credit_account, amount, pending_id, state"
                " FROM transfers ORDER BY id",
                cur=cur,
            ).fetchall()
        )

    def _pending_count(self, cur: sqlite3.Cursor) -> int:
        return int(self._execute("SELECT COUNT(*) FROM calls WHERE status = 'pending'", cur=cur).fetchone()[0])

    def _reconciliation(self, cur: sqlite3.Cursor) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self._execute(
                "SELECT id, status, billed_nano, overrun_nano FROM calls WHERE needs_reconciliation = 1 ORDER BY id",
                cur=cur,
            ).fetchall()
        ]

    async def run(self, op: Callable[[Tx], Coroutine[Any, Any, T]]) -> T:
        with self.transaction():
            return run_now(op(SQLiteTx(self.db)))

    async def reconciliation_calls(self) -> list[dict[str, Any]]:
        return self._reconciliation(self.db.cursor())


def _key(row: sqlite3.Row) -> KeyRecord:
    return KeyRecord(
        row["id"], row["name"], row["key_prefix"], bool(row["admin"]), row["max_spend_nano"],
        row["created_at"], row["revoked_at"], row["payer_id"],
    )  # fmt: skip


@record
class _Held:
    """A call this process held: its payer, funding hold and key account, and each funding hold's transfer id and
    bucket by the bucket's account; or, for a hold placed whole on overage (``funding`` None), ``overage``: the
    amount held, the funding hold's transfer id, and the spill and overage periods it counted in."""

    payer_id: str
    funding: HeldFunding | None
    account: str
    hold_ids: dict[str, tuple[int, str | None]]
    overage: tuple[Nano, int, float, float] | None = None


_OVERAGE_KIND = BucketKind.OVERAGE.value  # as a plain string (see _VOID above)


def _on_overage(amount: Nano) -> Allocation:
    """``amount`` placed whole on overage (nothing when 0), as `allocate` and `draw` return it for such a plan."""
    return Allocation((Portion(BucketKind.OVERAGE, _OVERAGE_KIND, amount),) if amount else ())


# A transfer row: call_id, kind, debit_account, credit_account, amount, pending_id, state, reason, ts, bucket.
TransferRow = tuple[str, str, str, str, Nano, int | None, str, str | None, float, str | None]
_INSERT_TRANSFERS = (
    "INSERT INTO transfers (call_id, kind, debit_account, credit_account, amount, pending_id, state, reason, ts,"
    " bucket)"
)

_IDS_PER_UPDATE = 500  # forwarded marks per `UPDATE … WHERE id IN (…)`, under SQLite's smallest parameter limit


def _funding_transfers(writes: Writes) -> list[TransferRow]:
    """Take the funding writes' transfers out of them, as rows for `SQLiteStore._insert_transfers`."""
    rows: list[TransferRow] = [
        (call_id, kind, debit, credit, amount, None, state, reason, ts, bucket)
        for call_id, kind, debit, credit, amount, state, reason, ts, bucket in writes.transfers
    ]
    writes.transfers = []
    return rows
