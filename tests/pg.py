"""The real PostgreSQL server for tests: one fresh database per test run, one fresh schema per test.

Use it from a test module with ``pytest_plugins = ("tests.pg",)`` and mark the tests ``postgres``.

When the server cannot be reached the tests that need it skip with the reason, except when
``CI=true``: then they fail (as errors at setup, with the same message), so a CI run cannot pass
without the database. ``FM_TEST_PG_ADMIN_URL`` points the fixtures at another server; the tests of
this very behaviour use it to name a port where nothing listens.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Iterator

import asyncpg
import pytest

ADMIN_URL = os.environ.get("FM_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _server_url(database: str) -> str:
    """ADMIN_URL with another database name."""
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + database


async def _execute(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def unreachable_reason() -> str | None:
    """None when the server answers; else why not."""
    try:
        asyncio.run(_execute(ADMIN_URL, "SELECT 1"))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL at {ADMIN_URL} is unreachable ({type(exc).__name__}: {exc})"
    return None


def require_server() -> None:
    """Skip (or, with CI=true, fail) when the server is unreachable."""
    reason = unreachable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so tests that need PostgreSQL fail instead of skipping", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database made for this test run (``fm_<pid>_<hex>``, created through ``test``); dropped at the end.

    Yields its URL. Tests share it; each test gets its own schema from ``pg_url``.
    """
    require_server()
    name = f"fm_{os.getpid()}_{secrets.token_hex(4)}"
    asyncio.run(_execute(ADMIN_URL, f'CREATE DATABASE "{name}"'))
    try:
        yield _server_url(name)
    finally:
        asyncio.run(_execute(ADMIN_URL, f'DROP DATABASE "{name}" WITH (FORCE)'))


def new_schema_url(database_url: str) -> str:
    """A fresh, empty schema in the run's database, and a URL whose connections use only it.

    asyncpg passes URL query parameters to the server as settings, so ``?search_path=…`` is all a
    store needs to live in that schema: isolation per test without a database per test.
    """
    schema = "t_" + secrets.token_hex(6)
    asyncio.run(_execute(database_url, f'CREATE SCHEMA "{schema}"'))
    return f"{database_url}?search_path={schema}"


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """A URL for this test alone (its own schema in the run's database)."""
    return new_schema_url(pg_database)


@pytest.fixture
def new_pg_url(pg_database: str) -> Callable[[], str]:
    """Makes a fresh schema (and its URL) per call: for tests that need many empty databases."""
    return lambda: new_schema_url(pg_database)
