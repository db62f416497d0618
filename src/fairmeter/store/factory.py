"""``open_store``: the one place a database URL is turned into a `Store`.

PostgreSQL is imported only when a ``postgresql://`` URL asks for it, so a SQLite deployment never
loads (or needs) its driver.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fairmeter.errors import ConfigError
from fairmeter.store.protocol import Store
from fairmeter.store.sqlite import SQLiteStore

T = TypeVar("T")
POSTGRES_SCHEMES = ("postgresql", "postgres")
POSTGRES_MODULE = "fairmeter.store.postgres"
ACCEPTED = "sqlite:///PATH, postgresql://… or postgres://…"


def open_store(database_url: str, now: float, batch: bool = True) -> Store:  # float-ok: seconds
    """Open (and migrate) the database ``database_url`` names; a URL no backend accepts is a `ConfigError`.

    ``batch=False`` commits every hot-path operation in a transaction of its own (no group commit):
    the naive baseline the ledger benchmark compares against.
    """
    scheme, sep, _ = database_url.partition("://")
    if database_url.startswith("sqlite:///"):
        return SQLiteStore(database_url, now, batch)
    if sep and scheme in POSTGRES_SCHEMES:
        return _postgres(database_url, scheme, now, batch)
    shown = f"{scheme}://…" if sep else repr(database_url)  # never the rest: it may hold a password
    raise ConfigError(f"unsupported database_url {shown}: expected {ACCEPTED}")


def _postgres(database_url: str, scheme: str, now: float, batch: bool) -> Store:  # float-ok: seconds
    try:
        module = importlib.import_module(POSTGRES_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name == POSTGRES_MODULE:
            why = "this version of fairmeter has no PostgreSQL backend; use sqlite:///PATH"
        else:  # the backend is there, its driver is not
            why = f"its PostgreSQL backend needs the Python module {exc.name!r}, which is not installed"
        raise ConfigError(f"database_url uses {scheme}://, but {why}") from None
    store: Store = module.PostgresStore.lazy(database_url, now, batch=batch)
    return store


def run_with(store: Store, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``work(store)`` to completion in a new event loop, then close the store (CLI commands, the demo)."""

    async def main() -> T:
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(main())
