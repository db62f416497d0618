"""SQL written once for both backends: a small transaction interface and its SQLite adapter.

Statements use PostgreSQL's numbered placeholders (``$1``, ``$2`` …); the SQLite adapter rewrites
them to SQLite's numbered ``?1``, ``?2`` …, which bind the same way. Both databases take the rest of
what this code writes (``ON CONFLICT … DO UPDATE``, ``RETURNING``, ``BIGINT``, ``DOUBLE PRECISION``).

The functions over :class:`Tx` are coroutines so that the PostgreSQL backend can await the server.
On SQLite nothing ever suspends, so :func:`run_now` drives such a coroutine to its end on the spot,
inside the group-commit transaction that is already open.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Coroutine, Mapping, Sequence
from functools import lru_cache
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
Row = Mapping[str, Any]


class Tx(Protocol):
    """One open transaction."""

    dialect: str  # "sqlite" | "postgres"

    async def fetch(self, sql: str, *args: object) -> list[Row]: ...

    async def fetchrow(self, sql: str, *args: object) -> Row | None: ...

    async def execute(self, sql: str, *args: object) -> int:
        """Run a statement; returns the number of rows it changed."""


_PLACEHOLDER = re.compile(r"\$(\d+)")


@lru_cache(maxsize=512)
def to_sqlite(sql: str) -> str:
    """``$3`` → ``?3`` (the statements never contain a literal dollar sign)."""
    return _PLACEHOLDER.sub(r"?\1", sql)


# Rows in one multi-row statement: with the widest rows written so (10 columns), 500 parameters, under the
# smallest limit SQLite builds set on one statement's (999).
ROWS_PER_STATEMENT = 50


def row_chunks(rows: Sequence[T]) -> Sequence[Sequence[T]]:
    """``rows`` in runs of at most ``ROWS_PER_STATEMENT``, one multi-row statement each (none for no rows)."""
    if len(rows) <= ROWS_PER_STATEMENT:  # nearly always: one run, and no generator to make
        return (rows,) if rows else ()
    return [rows[i : i + ROWS_PER_STATEMENT] for i in range(0, len(rows), ROWS_PER_STATEMENT)]


def values_list(first: int, types: Sequence[str | None], rows: int) -> str:
    """``($first, …), (…)``: ``rows`` rows of ``len(types)`` numbered parameters from ``$first``, in row order; a
    column with a type is cast to it (``$3::bigint``: PostgreSQL needs the casts where it cannot infer a type)."""
    width = len(types)
    return ", ".join(
        "(" + ", ".join(f"${first + r * width + i}" + (f"::{t}" if t else "") for i, t in enumerate(types)) + ")"
        for r in range(rows)
    )


@lru_cache(maxsize=128)
def values_sql(head: str, width: int, rows: int, tail: str = "") -> str:
    """``{head} VALUES ($1, …), (…) {tail}``: ``rows`` rows of ``width`` numbered parameters, in row order."""
    return f"{head} VALUES {values_list(1, (None,) * width, rows)} {tail}".rstrip()


class SQLiteTx:
    """:class:`Tx` over a ``sqlite3`` connection whose transaction the caller opened, or over one cursor of it
    (every result is read at once, so one cursor serves every statement and none is made per statement)."""

    __slots__ = ("db",)
    dialect = "sqlite"

    def __init__(self, db: sqlite3.Connection | sqlite3.Cursor) -> None:
        self.db = db

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        cur = self.db.execute(to_sqlite(sql), args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    async def fetchrow(self, sql: str, *args: object) -> Row | None:
        cur = self.db.execute(to_sqlite(sql), args)
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cur.description], row, strict=True))

    async def execute(self, sql: str, *args: object) -> int:
        return self.db.execute(to_sqlite(sql), args).rowcount


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (SQL over :class:`SQLiteTx`) and return its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a SQLite transaction step tried to suspend; it must run without awaiting I/O")
