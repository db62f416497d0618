"""The :class:`fairmeter.store.sql.Tx` interface over an asyncpg connection (PostgreSQL's side of the SQL
written once for both backends)."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from fairmeter.store.sql import Row

# A connection of its own or one lent by a pool.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


class PgTx:
    """Statements on a connection whose transaction the caller opened."""

    __slots__ = ("conn",)
    dialect = "postgres"

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        return [dict(r) for r in await self.conn.fetch(sql, *args)]

    async def fetchrow(self, sql: str, *args: object) -> Row | None:
        row = await self.conn.fetchrow(sql, *args)
        return None if row is None else dict(row)

    async def execute(self, sql: str, *args: object) -> int:
        """The number of rows changed, from the command tag (``UPDATE 3`` → 3)."""
        tag = await self.conn.execute(sql, *args)
        last = tag.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0
