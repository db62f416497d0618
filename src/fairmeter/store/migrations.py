"""Append-only migrations: small named steps, each recorded in `migrations` once applied.

Never edit or reorder a step that has shipped; add a new one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from fairmeter.store.funding_sql import M002_FUNDING, seed_defaults
from fairmeter.store.sql import SQLiteTx, run_now

Migration = tuple[str, Callable[[sqlite3.Connection, float], None]]  # float-ok: seconds


def _run(db: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT the surrounding transaction; run statement by statement instead.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def m001_core(db: sqlite3.Connection) -> None:
    _run(
        db,
        """
        CREATE TABLE keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            key_prefix TEXT NOT NULL,
            admin INTEGER NOT NULL DEFAULT 0,
            max_spend_nano INTEGER,
            created_at REAL NOT NULL,
            revoked_at REAL
        );
        CREATE TABLE accounts (
            id TEXT PRIMARY KEY,
            cap_nano INTEGER,
            debits_pending INTEGER NOT NULL DEFAULT 0,
            debits_posted INTEGER NOT NULL DEFAULT 0,
            credits_pending INTEGER NOT NULL DEFAULT 0,
            credits_posted INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE transfers (
            id INTEGER PRIMARY KEY,
            call_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            debit_account TEXT NOT NULL,
            credit_account TEXT NOT NULL,
            amount INTEGER NOT NULL CHECK (amount >= 0),
            pending_id INTEGER,
            state TEXT NOT NULL,
            reason TEXT,
            ts REAL NOT NULL
        );
        CREATE INDEX transfers_call ON transfers(call_id);
        CREATE TABLE calls (
            id TEXT PRIMARY KEY,
            key_id TEXT,
            provider TEXT NOT NULL,
            api TEXT NOT NULL,
            model TEXT,
            stream INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL,
            upstream_status INTEGER,
            usage_status TEXT,
            usage_json TEXT,
            cost_usd TEXT,
            billed_nano INTEGER NOT NULL DEFAULT 0,
            reserved_nano INTEGER NOT NULL DEFAULT 0,
            estimate_nano INTEGER NOT NULL DEFAULT 0,
            estimated INTEGER NOT NULL DEFAULT 0,
            breakdown_json TEXT,
            prices_json TEXT,
            price_source TEXT,
            idempotency_key TEXT,
            replay_of TEXT,
            needs_reconciliation INTEGER NOT NULL DEFAULT 0,
            overrun_nano INTEGER NOT NULL DEFAULT 0,
            hold_id INTEGER,
            forwarded INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_expires_at REAL,
            error_code TEXT,
            message TEXT,
            started_at REAL NOT NULL,
            ended_at REAL
        );
        CREATE INDEX calls_key_started ON calls(key_id, started_at);
        CREATE INDEX calls_started ON calls(started_at);
        CREATE INDEX calls_pending ON calls(lease_expires_at) WHERE status = 'pending';
        CREATE TABLE idempotency (
            key_id TEXT NOT NULL,
            idem_key TEXT NOT NULL,
            call_id TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (key_id, idem_key)
        );
        CREATE TABLE stored_responses (
            call_id TEXT PRIMARY KEY,
            status INTEGER NOT NULL,
            headers_json TEXT NOT NULL,
            body BLOB NOT NULL,
            stream INTEGER NOT NULL
        );
        """,
    )


def m002_funding(db: sqlite3.Connection, now: float) -> None:  # float-ok: seconds
    """Organisations, plans, payers and their funding buckets (docs/funding.md)."""
    _run(db, M002_FUNDING)
    run_now(seed_defaults(SQLiteTx(db), now))


# The ledger is append-only (ledger/model.py): the database refuses to change or remove a transfer. Each trigger is
# one statement (``_run`` splits on ";", which a trigger's body holds).
M003_APPEND_ONLY = (
    "CREATE TRIGGER transfers_no_update BEFORE UPDATE ON transfers"
    " BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: a transfer is never updated'); END",
    "CREATE TRIGGER transfers_no_delete BEFORE DELETE ON transfers"
    " BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: a transfer is never deleted'); END",
)


def m003_append_only(db: sqlite3.Connection) -> None:
    for statement in M003_APPEND_ONLY:
        db.execute(statement)


MIGRATIONS: list[Migration] = [
    ("m001_core", lambda db, now: m001_core(db)),
    ("m002_funding", m002_funding),
    ("m003_append_only", lambda db, now: m003_append_only(db)),
]


def apply_migrations(db: sqlite3.Connection, clock_now: float) -> list[str]:  # float-ok: seconds
    """Apply every migration not yet recorded; return the names applied."""
    db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    done = {row[0] for row in db.execute("SELECT name FROM migrations")}
    applied = []
    for name, step in MIGRATIONS:
        if name in done:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            step(db, clock_now)
            db.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, clock_now))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied
