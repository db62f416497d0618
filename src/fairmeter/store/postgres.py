"""PostgreSQL backend: the ``Store`` protocol over an asyncpg pool, for gateways that share one database.

Semantics are those of the SQLite backend, method for method; what differs is how they are made exact
when several processes write at once (docs/storage.md):

* Every method is one transaction, and most are one statement (data-modifying CTEs chained by
  RETURNING), so a call costs one round trip to place its hold and one to settle it.
* The cap check is the conditional ``UPDATE accounts … WHERE cap_nano IS NULL OR posted + pending + W <=
  cap_nano``: the row lock serialises holds on one key across processes, and PostgreSQL re-checks the
  condition against the newest committed row, so no interleaving passes the cap.
* Lock order, which keeps concurrent calls of one key from deadlocking: a call row (finish only), then
  the key's account, then that key's idempotency row and the provider's account. Every CTE that touches
  a row after the key account takes its input from the account update's RETURNING, so PostgreSQL cannot
  run it earlier. Holding the key account serialises everything else of that key.
* Provider-account credits are written in the same statement as the call's hold or settlement, so the
  books balance at every commit. Every call of a provider credits it, so its balance is kept in 16 rows
  (``provider:P/0`` … ``/15``, chosen by a hash of the call id) that ``accounts()`` and ``transfers()``
  read back as the one account ``provider:P``: commits of different calls rarely queue on one row lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from fairmeter.ledger.funding import Size
from fairmeter.ledger.model import Account, Transfer, TransferKind, TransferState, check_hold, with_outcomes
from fairmeter.money import Nano
from fairmeter.store.funding_sql import (
    PAYER_COLUMNS,
    HeldFunding,
    Payer,
    Shape,
    funding_ctes,
    hold_funding,
    payer_from_row,
    plan_settlement,
    settle_funding,
)
from fairmeter.store.pg_migrations import apply_migrations
from fairmeter.store.pg_tx import Conn, PgTx
from fairmeter.store.protocol import Books, CallPage, LapsedCall, Store
from fairmeter.store.records import (
    DEFAULT_ORG,
    CallEnd,
    CallStart,
    HoldOutcome,
    KeyRecord,
    StoredResponse,
    hash_key,
    new_key,
)
from fairmeter.store.sql import Tx

T = TypeVar("T")


class _Rollback(Exception):
    """Raised inside a transaction to undo it: the hold did not apply (see ``begin_call``)."""


log = logging.getLogger("fairmeter.store")

URL_SCHEMES = ("postgresql://", "postgres://")

# The hold: the conditional update of the key's account (the cap check), then, only if it applied,
# the idempotency claim, the hold transfer, the call row and the provider's pending credit. ``claimed``
# is false when the Idempotency-Key belongs to a live call (then the caller rolls the hold back).
_HOLD = """
WITH hold AS (
    UPDATE accounts SET debits_pending = debits_pending + $7,
        credits_pending = credits_pending + CASE WHEN $18::text IS NULL THEN 0 ELSE $7 END
    WHERE id = $15 AND (cap_nano IS NULL OR debits_posted + debits_pending + $7 <= cap_nano)
    RETURNING id
),
claim AS (
    INSERT INTO idempotency (key_id, idem_key, call_id, state, created_at)
    SELECT $2, $11, $1, 'pending', $14 FROM hold WHERE $11::text IS NOT NULL
    ON CONFLICT (key_id, idem_key) DO UPDATE
        SET call_id = EXCLUDED.call_id, state = 'pending', created_at = EXCLUDED.created_at
        WHERE idempotency.created_at <= EXCLUDED.created_at - $17::float8
           OR idempotency.state NOT IN ('pending', 'settled')
    RETURNING call_id
),
transfer AS (
    INSERT INTO transfers (call_id, kind, debit_account, credit_account, amount, state, ts)
    SELECT $1, 'hold', $15, $16, $7, 'pending', $14 FROM hold
    RETURNING id
),
call AS (
    INSERT INTO calls (id, key_id, provider, api, model, stream, status, reserved_nano, estimate_nano,
        prices_json, price_source, idempotency_key, hold_id, lease_owner, lease_expires_at, started_at,
        payer_id, funding_json)
    SELECT $1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9, $10, $11, id, $12, $13, $14, $18, $19 FROM transfer
),
payee AS (
    INSERT INTO accounts (id, credits_pending) SELECT $16, $7 FROM hold
    ON CONFLICT (id) DO UPDATE SET credits_pending = accounts.credits_pending + EXCLUDED.credits_pending
)
SELECT EXISTS (SELECT FROM hold) AS held, EXISTS (SELECT FROM claim) AS claimed
"""


# The same, with the funding leg's writes (store/funding_sql.py) applied only if the hold did.
# Parameters: the 17 of _HOLD, the payer ($18), the funding hold's JSON ($19), then Writes.params().
@lru_cache(maxsize=64)
def _hold_funded(shape: Shape) -> str:
    gated = funding_ctes(shape, 20, "WHERE EXISTS (SELECT FROM hold)")
    return _HOLD.replace("\nSELECT EXISTS", gated + "\nSELECT EXISTS")


# Why a hold did not apply, read in one snapshot: a live Idempotency-Key (in flight or settled, with its
# stored response) comes first, as in SQLite; else the account's numbers for the refusal.
_BLOCKED = """
SELECT a.id AS account, a.cap_nano, a.debits_posted, a.debits_pending, i.call_id AS other, i.state,
       s.status AS sr_status, s.headers_json, s.body, s.stream AS sr_stream
FROM (SELECT) AS one
LEFT JOIN accounts a ON a.id = $1
LEFT JOIN idempotency i ON i.key_id = $2 AND i.idem_key = $3 AND i.created_at > $4::float8 - $5::float8
    AND i.state IN ('pending', 'settled')
LEFT JOIN stored_responses s ON s.call_id = i.call_id AND i.state = 'settled'
"""

# Settle or void: the guarded update of the call row (a call resolves once), then the key's account, then, fed by
# that update, the provider's account, the resolution (post, void or expire, referencing the hold: no transfer is
# ever updated) and the overrun, the idempotency state and the stored response. posted = min(hold, cost) and
# overrun = cost - posted, as ledger.model.settlement_for: an overrun is never clamped.
_FINISH = """
WITH done AS (
    UPDATE calls SET status = $2, upstream_status = $3, usage_status = $4, usage_json = $5, cost_usd = $6,
        billed_nano = $7, estimated = $8, breakdown_json = $9, ended_at = $10, message = $11,
        overrun_nano = GREATEST(0, $7 - reserved_nano),
        needs_reconciliation = ($12 OR $7 > reserved_nano OR $25::int = 1)::int, lease_expires_at = NULL,
        paid_json = COALESCE($23, paid_json), explanation = COALESCE($24, explanation),
        prices_json = COALESCE($13, prices_json), price_source = COALESCE($14, price_source)
    WHERE id = $1 AND status = 'pending'
    RETURNING id, key_id, hold_id, reserved_nano, idempotency_key, payer_id, funding_json,
        'key:' || key_id AS debit, 'provider:' || provider || '/' || $22 AS credit,
        LEAST($7, reserved_nano) AS posted, GREATEST(0, $7 - reserved_nano) AS overrun
),
payer AS (
    UPDATE accounts a SET debits_pending = a.debits_pending - d.reserved_nano, debits_posted = a.debits_posted + $7,
        credits_pending = a.credits_pending - CASE WHEN d.funding_json IS NULL THEN 0 ELSE d.reserved_nano END,
        credits_posted = a.credits_posted + CASE WHEN d.funding_json IS NULL THEN 0 ELSE $7 END
    FROM done d WHERE a.id = d.debit
    RETURNING d.*
),
payee AS (
    INSERT INTO accounts (id, credits_pending, credits_posted) SELECT p.credit, -p.reserved_nano, $7 FROM payer p
    ON CONFLICT (id) DO UPDATE SET credits_pending = accounts.credits_pending + EXCLUDED.credits_pending,
        credits_posted = accounts.credits_posted + EXCLUDED.credits_posted
),
moves AS (
    INSERT INTO transfers (call_id, kind, debit_account, credit_account, amount, pending_id, state, reason, ts)
    SELECT p.id, m.kind, p.debit, p.credit, m.amount, p.hold_id, 'posted', m.reason, $16
    FROM payer p
    CROSS JOIN LATERAL (VALUES (1, $15::text, p.posted, NULL::text), (2, 'overrun', p.overrun, 'cost above hold'))
        AS m (n, kind, amount, reason)
    WHERE m.n = 1 OR m.amount > 0
    ORDER BY m.n
),
idem AS (
    UPDATE idempotency i SET state = $17 FROM payer p
    WHERE i.key_id = p.key_id AND i.idem_key = p.idempotency_key AND i.call_id = p.id
),
kept AS (
    INSERT INTO stored_responses (call_id, status, headers_json, body, stream)
    SELECT p.id, $18, $19, $20, $21 FROM payer p WHERE p.idempotency_key IS NOT NULL AND $18::int IS NOT NULL
    ON CONFLICT (call_id) DO UPDATE SET status = EXCLUDED.status, headers_json = EXCLUDED.headers_json,
        body = EXCLUDED.body, stream = EXCLUDED.stream
)
SELECT overrun, payer_id, funding_json, debit FROM done
"""


# The same, with the funding leg's settlement (planned by the process that held the call) in the statement.
# Parameters: the 25 of _FINISH, then Writes.params() (which resolve each funding hold: `funding_sql.resolve_sql`).
@lru_cache(maxsize=64)
def _finish_funded(shape: Shape) -> str:
    return _FINISH.replace(
        "\nSELECT overrun,", funding_ctes(shape, 26, "WHERE EXISTS (SELECT FROM done)") + "\nSELECT overrun,"
    )


_CREATE_KEY = """
WITH k AS (
    INSERT INTO keys (id, name, key_hash, key_prefix, admin, max_spend_nano, created_at, org_id, service, payer_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $2, $9)
    RETURNING id
)
INSERT INTO accounts (id, cap_nano) SELECT 'key:' || id, $6 FROM k
"""

_REFUSAL = """
INSERT INTO calls (id, key_id, provider, api, model, stream, status, usage_status, cost_usd, reserved_nano,
    idempotency_key, error_code, message, started_at, ended_at, prices_json, price_source)
VALUES ($1, $2, $3, $4, $5, $6, $7, 'error', NULL, $8, $9, $10, $11, $12, $13, $14, $15)
"""

_REPLAY = """
INSERT INTO calls (id, key_id, provider, api, model, stream, status, usage_status, cost_usd,
    idempotency_key, replay_of, message, started_at, ended_at)
VALUES ($1, $2, $3, $4, $5, $6, 'ok', 'complete', '0', $7, $8, $9, $10, $11)
"""


def check_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` URLs (libpq style; query parameters become server settings)."""
    if not url.startswith(URL_SCHEMES):
        raise ValueError(f"not a PostgreSQL URL: {url!r} (expected postgresql://USER@HOST:PORT/DB)")
    return url


async def _no_session_state(conn: asyncpg.Connection) -> None:
    """Pool reset: this store sets no session state, so skip asyncpg's reset query (a round trip per release).

    asyncpg still rolls back a transaction left open before calling this.
    """


class PostgresStore:
    """Keys, the ledger and the call records in one PostgreSQL database, shared by any number of gateways.

    The connection pool belongs to an event loop, so it is made on first use, in the loop that uses
    the store (``lazy``), or at once by ``open``. Migrations are applied when the pool is made.
    """

    def __init__(self, url: str, now: float, *, pool_size: int = 10, batch: bool = True) -> None:  # float-ok
        self.url = check_url(url)
        self._now = now
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Lock | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.batch = batch  # False: one transaction per hold and per settlement (the naive baseline)
        self._committer: _GroupCommit | None = None
        # Calls this process held, with their funding hold: settled in one statement (others in two).
        self._held: dict[str, tuple[str, HeldFunding, str]] = {}

    @classmethod
    def lazy(cls, url: str, now: float, *, batch: bool = True) -> PostgresStore:  # float-ok: seconds
        """A store that connects (and migrates) on its first use (``open_store``)."""
        return cls(url, now, batch=batch)

    @classmethod
    async def open(cls, url: str, now: float, *, pool_size: int = 10, batch: bool = True) -> PostgresStore:  # float-ok
        """Connect a pool to ``url`` and apply pending migrations now."""
        store = cls(url, now, pool_size=pool_size, batch=batch)
        await store.pool()
        return store

    async def pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                pool = await asyncpg.create_pool(
                    self.url, min_size=1, max_size=self._pool_size, reset=_no_session_state
                )
                try:
                    async with pool.acquire() as conn:
                        await apply_migrations(conn, self._now)
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
        return self._pool

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and migrate now, so a serving gateway fails at start, not on its first call."""
        await self.pool()

    async def close(self) -> None:
        """Wait for queued ``mark_forwarded`` writes, then close the pool."""
        await asyncio.gather(*list(self._background), return_exceptions=True)  # failures: logged by _forget
        if self._pool is not None:
            await (await self.pool()).close()
            self._pool = None

    async def run(self, op: Callable[[Tx], Coroutine[Any, Any, T]]) -> T:
        """``op`` in one transaction of its own."""
        async with (await self.pool()).acquire() as conn, conn.transaction():
            return await op(PgTx(conn))

    # ---- keys --------------------------------------------------------------------------------

    async def create_key(self, name: str, max_spend: Nano | None, admin: bool, now: float) -> tuple[KeyRecord, str]:
        key, secret = new_key(name, max_spend, admin, now)
        await (await self.pool()).execute(
            _CREATE_KEY, key.id, name, hash_key(secret), key.prefix, int(admin), max_spend, now, DEFAULT_ORG,
            key.payer_id,
        )  # fmt: skip
        return key, secret

    async def key_by_hash(self, digest: str) -> KeyRecord | None:
        row = await (await self.pool()).fetchrow("SELECT * FROM keys WHERE key_hash = $1", digest)
        return _key(row) if row else None

    async def list_keys(self) -> list[KeyRecord]:
        return [_key(r) for r in await (await self.pool()).fetch("SELECT * FROM keys ORDER BY created_at, id")]

    async def revoke_key(self, key_id: str, now: float) -> bool:
        row = await (await self.pool()).fetchrow(
            "UPDATE keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL RETURNING id", now, key_id
        )
        return row is not None

    async def key_spend(self, key_id: str) -> tuple[Nano, Nano]:
        row = await (await self.pool()).fetchrow(
            "SELECT debits_posted, debits_pending FROM accounts WHERE id = $1", f"key:{key_id}"
        )
        return (row[0], row[1]) if row else (0, 0)

    # ---- the hot path ------------------------------------------------------------------------

    async def begin_call(self, call: CallStart, idempotency_ttl_s: int) -> HoldOutcome:
        """Idempotency check, then the hold of ``call.reserved`` under the key's cap, atomically.

        Without an Idempotency-Key the hold is one statement (one round trip, its own transaction). With
        one, the statement runs in a transaction that is rolled back if the key turns out to be live.
        When the hold did not apply, one snapshot read says why: a live key (in flight → ``in_use``,
        settled → ``replay``) or the cap (``refused``, with numbers that were true at that instant). If
        neither holds any more (room was freed in between), the hold is tried again.
        """
        if call.key_id is None:
            raise LookupError(f"call {call.id} has no key, so no ledger account to hold on")
        idem = call.idempotency_key
        account = f"key:{call.key_id}"
        while True:
            outcome = await self._batched(
                call.payer_id,
                None,
                lambda conn, shard, payers: _hold(conn, call, idempotency_ttl_s, account, shard, payers, self._held),
            )
            if outcome is not None and outcome.kind == "held":
                return outcome
            why = await (await self.pool()).fetchrow(
                _BLOCKED, account, call.key_id, idem, call.started_at, idempotency_ttl_s
            )
            assert why is not None
            if outcome is not None and why["other"] is None:  # the payer's buckets refused it (no live key)
                return outcome
            blocked = _blocked(why, account, call.reserved)
            if blocked is not None:
                return blocked

    async def _batched(
        self,
        payer_id: str | None,
        call_id: str | None,
        op: Callable[[Conn, int, dict[str, Payer]], Coroutine[Any, Any, T]],
    ) -> T:
        """Run ``op`` in a transaction: its own (``batch=False``) or one shared by every operation queued
        meanwhile in this process (group commit). ``op`` gets the connection and the provider shard to credit."""
        if not self.batch:
            async with (await self.pool()).acquire() as conn, conn.transaction():
                payers = {}
                if call_id is not None:  # a hold locks its payer itself, first
                    payers = await _lock_payers(conn, [], [call_id])
                return await op(conn, secrets.randbelow(PROVIDER_SHARDS), payers)
        if self._committer is None:
            self._committer = _GroupCommit(self)
        return await self._committer.run(payer_id, call_id, op)

    def mark_forwarded(self, call_id: str) -> None:
        """Queue the write on the running loop and return at once; ``close()`` waits for it."""
        task = asyncio.get_running_loop().create_task(self._mark_forwarded(call_id))
        self._background.add(task)
        task.add_done_callback(self._forget)

    async def _mark_forwarded(self, call_id: str) -> None:
        await (await self.pool()).execute("UPDATE calls SET forwarded = 1 WHERE id = $1", call_id)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("recording a forwarded call failed", exc_info=task.exception())

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
        """Resolve a pending hold in one statement: post ``end.billed`` and release the rest, or void it.

        ``ride`` changes nothing here: the statement goes at once, on a pooled connection.

        Returns the overrun posted (0 normally). A call that is no longer pending is left as it is: the
        guarded update of its row matches nothing, and PostgreSQL re-checks the guard against the newest
        row when two resolutions race, so only one applies.
        """
        actual = 0 if void else end.billed
        kind = TransferKind.VOID if void else TransferKind.EXPIRE if expired else TransferKind.POST
        sr = None if void else end.stored_response
        args = (
            call_id, end.status, end.upstream_status, end.usage_status, end.usage_json, end.cost_usd, actual,
            int(end.estimated), end.breakdown_json, end.ended_at, end.message, needs_reconciliation,
            end.prices_json, end.price_source, kind.value, now, "voided" if void else "settled",
            sr.status if sr else None, json.dumps(sr.headers) if sr else None, sr.body if sr else None,
            int(sr.stream) if sr else None,
        )  # fmt: skip

        held = self._held.pop(call_id, None)

        async def op(conn: Conn, shard: int, _payers: dict[str, Payer]) -> Nano:
            if held is not None:  # this process held it: the whole settlement is one statement
                payer_id, funding_text, key = held
                w, done, _, _ = await plan_settlement(
                    PgTx(conn), call_id, payer_id, key, funding_text, Size(actual, end.tokens), now, void=void,
                    credit_key=False,
                )  # fmt: skip
                if done is not None and w.call is not None:
                    row = await conn.fetchrow(
                        _finish_funded(w.shape), *args, str(shard), w.call[1], w.call[2], w.call[3], *w.params()
                    )
                    return 0 if row is None else int(row["overrun"] or 0)
            row = await conn.fetchrow(_FINISH, *args, str(shard), None, None, 0)
            if row is None:
                return 0
            if row["funding_json"] is not None:  # also writes the call's paid_json and explanation
                await settle_funding(
                    PgTx(conn), call_id, row["payer_id"], row["debit"], row["funding_json"], Size(actual, end.tokens),
                    now, void=void, credit_key=False,
                )  # fmt: skip
            return int(row["overrun"] or 0)

        return await self._batched(None, call_id, op)

    async def record_refusal(self, call: CallStart, status: str, code: str, message: str, ended_at: float) -> None:
        """A call that never got a hold; ``reserved_nano`` records the hold it asked for, no transfer exists."""
        await (await self.pool()).execute(
            _REFUSAL,
            call.id, call.key_id, call.provider, call.api, call.model, int(call.stream), status, call.reserved,
            call.idempotency_key, code, message, call.started_at, ended_at, call.prices_json, call.price_source,
        )  # fmt: skip

    async def record_replay(self, call: CallStart, original: str, ended_at: float) -> None:
        await (await self.pool()).execute(
            _REPLAY,
            call.id, call.key_id, call.provider, call.api, call.model, int(call.stream), call.idempotency_key,
            original,
            f"repeat of call {original} (same Idempotency-Key): stored response returned, nothing charged",
            call.started_at, ended_at,
        )  # fmt: skip

    # ---- leases ------------------------------------------------------------------------------

    async def renew_leases(self, owner: str, until: float) -> int:
        """Extend the leases of this process's pending calls (one statement for all of them)."""
        count = await (await self.pool()).fetchval(
            "WITH renewed AS (UPDATE calls SET lease_expires_at = $1 WHERE status = 'pending' AND lease_owner = $2"
            " RETURNING 1) SELECT count(*) FROM renewed",
            until,
            owner,
        )
        return int(count)

    async def lapsed_calls(self, now: float) -> list[LapsedCall]:
        rows = await (await self.pool()).fetch(
            "SELECT id, forwarded, estimate_nano FROM calls WHERE status = 'pending' AND lease_expires_at < $1"
            " ORDER BY lease_expires_at, id",
            now,
        )
        return [LapsedCall(r["id"], bool(r["forwarded"]), r["estimate_nano"]) for r in rows]

    # ---- reads -------------------------------------------------------------------------------

    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        row = await (await self.pool()).fetchrow("SELECT * FROM calls WHERE id = $1", call_id)
        return dict(row) if row else None

    async def list_calls(self, page: CallPage) -> list[dict[str, Any]]:
        """Calls newest first; ``page.cursor`` is the (started_at, id) of the previous page's last row."""
        where: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if page.key_id is not None:
            where.append(f"key_id = {arg(page.key_id)}")
        if page.since is not None:
            where.append(f"started_at >= {arg(page.since)}")
        if page.until is not None:
            where.append(f"started_at < {arg(page.until)}")
        if page.status is not None:
            where.append(f"status = {arg(page.status)}")
        if page.cursor is not None:
            where.append(f"(started_at, id) < ({arg(page.cursor[0])}, {arg(page.cursor[1])})")
        sql = "SELECT * FROM calls"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY started_at DESC, id DESC LIMIT {arg(page.limit)}"
        return [dict(r) for r in await (await self.pool()).fetch(sql, *args)]

    async def accounts(self) -> list[Account]:
        return await _accounts(await self.pool())

    async def transfers(self) -> list[Transfer]:
        return await _transfers(await self.pool())

    async def pending_count(self) -> int:
        """Calls whose hold is still pending (in flight, or lapsed and not yet resolved)."""
        return await _pending_count(await self.pool())

    async def reconciliation_calls(self) -> list[dict[str, Any]]:
        return await _reconciliation(await self.pool())

    async def books(self) -> Books:
        """One REPEATABLE READ, READ ONLY transaction: every read of it sees the snapshot of its first."""
        async with (await self.pool()).acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            return Books(await _accounts(conn), await _transfers(conn), await _pending_count(conn),
                         await _reconciliation(conn))  # fmt: skip


async def _accounts(db: asyncpg.Pool | Conn) -> list[Account]:
    """Every account; a provider's shards (``provider:P/0`` … ``/15``) read back as ``provider:P``."""
    rows = await db.fetch(
        "SELECT regexp_replace(id, '/[0-9]+$', '') AS id, max(cap_nano) AS cap, sum(debits_pending) AS dp,"
        " sum(debits_posted) AS dpo, sum(credits_pending) AS cp, sum(credits_posted) AS cpo FROM accounts"
        " GROUP BY 1 ORDER BY 1"
    )
    return [Account(r[0], r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5])) for r in rows]


async def _transfers(db: asyncpg.Pool | Conn) -> list[Transfer]:
    rows = await db.fetch(
        "SELECT id, call_id, kind, regexp_replace(debit_account, '/[0-9]+$', ''),"
        " regexp_replace(credit_account, '/[0-9]+$', ''), amount, pending_id, state FROM transfers ORDER BY id"
    )
    return with_outcomes(
        Transfer(r[0], r[1], TransferKind(r[2]), r[3], r[4], r[5], r[6], TransferState(r[7])) for r in rows
    )


async def _pending_count(db: asyncpg.Pool | Conn) -> int:
    return int(await db.fetchval("SELECT count(*) FROM calls WHERE status = 'pending'"))


async def _reconciliation(db: asyncpg.Pool | Conn) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT id, status, billed_nano, overrun_nano FROM calls WHERE needs_reconciliation = 1 ORDER BY id"
    )
    return [dict(r) for r in rows]


async def _hold(
    conn: Conn,
    call: CallStart,
    ttl_s: int,
    account: str,
    shard: int,
    payers: dict[str, Payer],
    held: dict[str, tuple[str, HeldFunding, str]] | None = None,
) -> HoldOutcome | None:
    """The hold, inside the caller's transaction: the payer's buckets read under its lock, then one statement
    that writes the spend leg and, only if that applied, the funding leg. None when the key's cap or a live
    Idempotency-Key stopped it (nothing written); ``unfunded`` when the payer's buckets did."""
    args = (
        call.id, call.key_id, call.provider, call.api, call.model, int(call.stream), call.reserved, call.estimate,
        call.prices_json, call.price_source, call.idempotency_key, call.lease_owner, call.lease_expires_at,
        call.started_at, account, f"provider:{call.provider}/{shard}", ttl_s,
    )  # fmt: skip
    payer = payers.get(call.payer_id) if call.payer_id else None  # read (and locked) by the batch, when batched
    if call.idempotency_key is None:
        return await _hold_once(conn, call, args, account, payer, held)
    try:
        async with conn.transaction():  # a savepoint: a claim lost to a live key undoes the whole statement
            outcome = await _hold_once(conn, call, args, account, payer, held)
            if outcome is None:
                raise _Rollback(None)
            return outcome
    except _Rollback:
        return None


async def _hold_once(
    conn: Conn,
    call: CallStart,
    args: tuple[Any, ...],
    account: str,
    payer: Payer | None,
    held: dict[str, tuple[str, HeldFunding, str]] | None = None,
) -> HoldOutcome | None:
    if call.payer_id is None:
        row = await conn.fetchrow(_HOLD, *args, None, None)
    else:
        size = Size(call.reserved, call.tokens)
        fh = await hold_funding(
            PgTx(conn), call.id, call.payer_id, account, size, call.started_at, credit_key=False, flush=False,
            payer=payer,
        )  # fmt: skip
        if fh.refusal is not None:
            return fh.refused()
        assert fh.writes is not None
        assert fh.held is not None
        row = await conn.fetchrow(_hold_funded(fh.writes.shape), *args, call.payer_id, fh.json, *fh.writes.params())
        if row is not None and row["held"] and held is not None:
            held[call.id] = (call.payer_id, fh.held, account)
    if row is None or not row["held"] or (call.idempotency_key is not None and not row["claimed"]):
        return None
    return HoldOutcome("held")


PROVIDER_SHARDS = 16
MAX_BATCH = 64
RUNNERS = 8


async def _lock_payers(conn: Conn, payer_ids: list[str], call_ids: list[str]) -> dict[str, Payer]:
    """Lock the payers of a transaction's operations first, in id order (every transaction that touches a
    payer's rows takes that payer's lock first, so two transactions never wait for each other in a cycle),
    and read them in the same statement: the holds of the batch then need no read of their own."""
    if not (payer_ids or call_ids):
        return {}
    rows = await conn.fetch(
        f"SELECT {PAYER_COLUMNS} FROM payers JOIN plans ON plans.name = payers.plan"
        " WHERE payers.id = ANY($1::text[]) OR payers.id IN (SELECT payer_id FROM calls WHERE id = ANY($2::text[]))"
        " ORDER BY payers.id FOR UPDATE OF payers",
        sorted(set(payer_ids)),
        call_ids,
    )
    return {r["id"]: payer_from_row(dict(r)) for r in rows}


@dataclass
class _Queued:
    payer_id: str | None
    call_id: str | None
    op: Callable[[Conn, int, dict[str, Payer]], Coroutine[Any, Any, Any]]
    done: asyncio.Future[Any]


class _GroupCommit:
    """Group commit on PostgreSQL: holds and settlements queued while a transaction runs share the next
    one (up to ``MAX_BATCH``; ``RUNNERS`` transactions at once, each on its own connection).

    A batch locks its payers first, in id order, and credits one provider shard, so batches of different
    processes never deadlock. A hold writes nothing unless it fits (one statement, gated on the cap; a
    savepoint when an Idempotency-Key may be lost to a live call), so one that does not fit is undone alone. If an
    operation raises, the batch is rolled back and its operations are run one transaction each, so only
    the failing one fails.
    """

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.queue: list[_Queued] = []
        self.runners = 0

    async def run(
        self,
        payer_id: str | None,
        call_id: str | None,
        op: Callable[[Conn, int, dict[str, Payer]], Coroutine[Any, Any, T]],
    ) -> T:
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.queue.append(_Queued(payer_id, call_id, op, done))
        if self.runners < RUNNERS:
            self.runners += 1
            task = asyncio.get_running_loop().create_task(self._drain())
            self.store._background.add(task)
            task.add_done_callback(self.store._forget)
        return await done

    async def _drain(self) -> None:
        try:
            while self.queue:
                batch, self.queue = self.queue[:MAX_BATCH], self.queue[MAX_BATCH:]
                try:
                    results = await self._commit(batch)
                except Exception as exc:
                    if len(batch) == 1:
                        _settle(batch[0].done, exc)
                    else:
                        log.exception("a batch of %d ledger operations failed; running them one by one", len(batch))
                        for item in batch:
                            await self._alone(item)
                    continue
                for item, value in zip(batch, results, strict=True):
                    if not item.done.done():
                        item.done.set_result(value)
        finally:
            self.runners -= 1

    async def _commit(self, batch: list[_Queued]) -> list[Any]:
        pool = await self.store.pool()
        async with pool.acquire() as conn, conn.transaction():
            payers = await _lock_payers(
                conn, [b.payer_id for b in batch if b.payer_id], [b.call_id for b in batch if b.call_id]
            )
            shard = secrets.randbelow(PROVIDER_SHARDS)
            return [await item.op(conn, shard, payers) for item in batch]

    async def _alone(self, item: _Queued) -> None:
        try:
            value = (await self._commit([item]))[0]
        except Exception as exc:
            _settle(item.done, exc)
            return
        if not item.done.done():
            item.done.set_result(value)


def _settle(done: asyncio.Future[Any], exc: BaseException) -> None:
    if not done.done():
        done.set_exception(exc)


def _blocked(why: asyncpg.Record | None, account: str, amount: Nano) -> HoldOutcome | None:
    """The outcome of a hold that did not apply, from the ``_BLOCKED`` read; None when it would fit now."""
    assert why is not None  # the read always returns its one row
    if why["other"] is not None:
        if why["state"] == "pending":
            return HoldOutcome("in_use", other_call_id=why["other"])
        stored = None
        if why["sr_status"] is not None:
            headers = [(str(k), str(v)) for k, v in json.loads(why["headers_json"])]
            stored = StoredResponse(why["sr_status"], headers, bytes(why["body"]), bool(why["sr_stream"]))
        return HoldOutcome("replay", other_call_id=why["other"], stored=stored)
    if why["account"] is None:
        raise LookupError(f"no ledger account {account}")
    refused = check_hold(why["cap_nano"], why["debits_posted"], why["debits_pending"], amount)
    return None if refused is None else HoldOutcome("refused", refused=refused)


def _key(row: asyncpg.Record) -> KeyRecord:
    return KeyRecord(
        row["id"], row["name"], row["key_prefix"], bool(row["admin"]), row["max_spend_nano"],
        row["created_at"], row["revoked_at"], row["payer_id"],
    )  # fmt: skip


if TYPE_CHECKING:

    def _implements_store(store: PostgresStore) -> Store:
        """mypy checks here that PostgresStore implements the protocol."""
        return store
