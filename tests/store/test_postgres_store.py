"""What only the PostgreSQL backend has: its migrations, its URLs, its background writes, its fixtures."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from fairmeter.store.migrations import apply_migrations as apply_sqlite_migrations
from fairmeter.store.pg_migrations import MIGRATIONS as PG_MIGRATIONS
from fairmeter.store.pg_migrations import migrate
from fairmeter.store.postgres import PostgresStore
from fairmeter.store.records import CallStart

pytest_plugins = ("tests.pg",)

REPO = Path(__file__).resolve().parents[2]


def _pg_columns(url: str) -> dict[str, dict[str, str]]:
    async def read() -> dict[str, dict[str, str]]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                "SELECT table_name, column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
            )
        finally:
            await conn.close()
        out: dict[str, dict[str, str]] = {}
        for r in rows:
            out.setdefault(r["table_name"], {})[r["column_name"]] = r["data_type"]
        return out

    return asyncio.run(read())


def _sqlite_columns() -> dict[str, dict[str, str]]:
    db = sqlite3.connect(":memory:", isolation_level=None)
    apply_sqlite_migrations(db, 0.0)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {t: {c[1]: c[2] for c in db.execute(f"PRAGMA table_info({t})")} for t in tables}


def _pg_type_for(table: str, column: str, sqlite_type: str) -> str:
    """The PostgreSQL type a SQLite column must have (the rules of pg_migrations' docstring)."""
    if sqlite_type in ("REAL", "DOUBLE PRECISION"):  # m002 declares the PostgreSQL names in both
        return "double precision"
    if sqlite_type == "BIGINT":
        return "bigint"
    if sqlite_type == "BLOB":
        return "bytea"
    if sqlite_type == "TEXT":
        return "text"
    amount = column.endswith("_nano") or column.startswith(("debits_", "credits_")) or column == "amount"
    transfer_id = column in ("pending_id", "hold_id") or (table, column) == ("transfers", "id")
    return "bigint" if amount or transfer_id else "integer"


@pytest.mark.postgres
def test_migrations_make_the_same_tables_and_columns_as_sqlite(pg_url: str) -> None:
    assert [name for name, _ in PG_MIGRATIONS] == ["m001_core", "m002_funding", "m003_append_only"]
    assert asyncio.run(migrate(pg_url, 5.0)) == ["m001_core", "m002_funding", "m003_append_only"]
    assert asyncio.run(migrate(pg_url, 6.0)) == []
    pg, lite = _pg_columns(pg_url), _sqlite_columns()
    assert set(pg) == set(lite)
    for table, columns in lite.items():
        assert list(pg[table]) == list(columns), table
        assert pg[table] == {c: _pg_type_for(table, c, t) for c, t in columns.items()}, table


@pytest.mark.postgres
def test_concurrent_migrations_apply_each_step_once(pg_url: str) -> None:
    async def four_at_once() -> list[list[str]]:
        return list(await asyncio.gather(*(migrate(pg_url, float(n)) for n in range(4))))

    results = asyncio.run(four_at_once())
    assert sorted(results) == [[], [], [], ["m001_core", "m002_funding", "m003_append_only"]]

    async def recorded() -> list[str]:
        conn = await asyncpg.connect(pg_url)
        try:
            return [r["name"] for r in await conn.fetch("SELECT name FROM migrations")]
        finally:
            await conn.close()

    assert asyncio.run(recorded()) == ["m001_core", "m002_funding", "m003_append_only"]


@pytest.mark.postgres
def test_both_url_schemes_open_and_others_are_refused(pg_url: str) -> None:
    alias = pg_url.replace("postgresql://", "postgres://", 1)
    assert alias != pg_url

    async def open_alias() -> str:
        store = await PostgresStore.open(alias, 0.0)
        try:
            key, _ = await store.create_key("k", None, False, 0.0)
            return key.name
        finally:
            await store.close()

    assert asyncio.run(open_alias()) == "k"
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        asyncio.run(PostgresStore.open("sqlite:///fm.db", 0.0))


@pytest.mark.postgres
def test_the_store_keeps_its_url(pg_url: str) -> None:
    async def body() -> str:
        store = await PostgresStore.open(pg_url, 0.0)
        await store.start()
        await store.start()  # idempotent
        await store.close()
        return store.url

    assert asyncio.run(body()) == pg_url


@pytest.mark.postgres
def test_a_failed_forwarded_write_is_logged_not_raised(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        store = await PostgresStore.open(pg_url, 0.0)
        key, _ = await store.create_key("k", None, False, 0.0)
        call = CallStart("call_1", key.id, "openai", "chat", "m", False, 5, 1, None, None, None, 1.0, "gw", 9.0)
        await store.begin_call(call, 60)
        conn = await asyncpg.connect(pg_url)
        await conn.execute("ALTER TABLE calls RENAME TO calls_gone")
        await conn.close()
        store.mark_forwarded(call.id)
        await store.close()

    with caplog.at_level(logging.ERROR, logger="fairmeter.store"):
        asyncio.run(body())
    assert [r.getMessage() for r in caplog.records] == ["recording a forwarded call failed"]
    assert caplog.records[0].exc_info is not None


def _run_contract_test_against_a_dead_server(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["FM_TEST_PG_ADMIN_URL"] = "postgresql://postgres@127.0.0.1:1/test"  # nothing listens on port 1
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "keys_are_created",
         "tests/store/test_store_contract.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_an_unreachable_server_skips_the_tests_with_the_reason() -> None:
    done = _run_contract_test_against_a_dead_server(None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped" in done.stdout and "PostgreSQL at postgresql://postgres@127.0.0.1:1/test is unreachable" in (
        done.stdout
    )


def test_an_unreachable_server_fails_the_tests_when_ci_is_true() -> None:
    done = _run_contract_test_against_a_dead_server("true")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 error" in done.stdout and "skipped" not in done.stdout
    assert "CI=true, so tests that need PostgreSQL fail instead of skipping" in done.stdout
