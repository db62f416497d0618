"""The SQLite store keeps payers as it read them between holds: a change must reach the very next hold,
whether it went through the same store (the admin API) or another process (a CLI command)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fairmeter.store import admin_sql, open_store
from fairmeter.store.records import CallEnd, CallStart
from fairmeter.store.sql import Tx
from fairmeter.store.sqlite import SQLiteStore

NOW = time.time()
HOLD = 2_000_000


def call(n: int, key_id: str, payer_id: str) -> CallStart:
    return CallStart(
        id=f"call_{n}", key_id=key_id, provider="openai", api="chat", model="gpt-4o-mini", stream=False,
        reserved=HOLD, estimate=HOLD // 2, prices_json=None, price_source=None, idempotency_key=None,
        started_at=NOW, lease_owner="t", lease_expires_at=NOW + 600, payer_id=payer_id, tokens=100,
    )  # fmt: skip


async def outcome(store: SQLiteStore, n: int, key_id: str, payer_id: str) -> str:
    """Hold a call; settle it when held. Returns the hold's outcome."""
    held = await store.begin_call(call(n, key_id, payer_id), 86_400)
    if held.kind == "held":
        end = CallEnd("ok", 200, "complete", None, "0.001", HOLD // 2, False, None, NOW, tokens=100)
        await store.finish_call(f"call_{n}", end, NOW)
    return held.kind


def test_a_switch_changed_by_another_process_or_through_the_store_reaches_the_next_hold(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'f.db'}"

    async def main() -> None:
        server = open_store(url, NOW)
        cli = open_store(url, NOW)  # a second connection to the same file, as `fairmeter payers …` has
        assert isinstance(server, SQLiteStore)
        await cli.run(lambda tx: admin_sql.create_org(tx, "acme", "test", NOW))
        payer = (await cli.run(lambda tx: admin_sql.create_payer(tx, "acme", None, "payg", {}, "test", NOW)))["id"]
        key, _ = await cli.create_key("k", None, False, NOW)
        await cli.run(lambda tx: admin_sql.assign_key(tx, key.id, "acme", None, "svc", "test", NOW))

        def switch(on: bool) -> Callable[[Tx], Coroutine[Any, Any, dict[str, Any]]]:
            return lambda tx: admin_sql.set_payer(tx, payer, {"overage_enabled": on}, "test", NOW)

        assert await outcome(server, 1, key.id, payer) == "held"  # the payer is now read and kept
        assert payer in server._payers
        await cli.run(switch(False))  # another process turns overage (this plan's only bucket) off
        assert await outcome(server, 2, key.id, payer) == "unfunded"
        await cli.run(switch(True))
        assert await outcome(server, 3, key.id, payer) == "held"
        await server.run(switch(False))  # the same change through the serving store itself
        assert await outcome(server, 4, key.id, payer) == "unfunded"
        await server.run(switch(True))
        assert await outcome(server, 5, key.id, payer) == "held"
        await server.close()
        await cli.close()

    asyncio.run(main())


def test_an_uncapped_period_counter_is_written_once_per_transaction_a_capped_one_at_once(tmp_path: Path) -> None:
    """A payer's overage period counter is summed per group commit when no cap reads it, and written by every
    hold and settlement when a cap does (so the next hold in the same transaction sees it)."""
    url = f"sqlite:///{tmp_path / 'p.db'}"
    calls = 8

    async def run(cap_usd: str | None) -> tuple[list[str], tuple[int, int]]:
        store = open_store(url, NOW)
        assert isinstance(store, SQLiteStore)
        org = "uncapped" if cap_usd is None else "capped"
        await store.run(lambda tx: admin_sql.create_org(tx, org, "test", NOW))
        switches = {} if cap_usd is None else {"overage_cap_usd": cap_usd}
        payer = (await store.run(lambda tx: admin_sql.create_payer(tx, org, None, "payg", switches, "test", NOW)))["id"]
        key, _ = await store.create_key(org, None, False, NOW)
        await store.run(lambda tx: admin_sql.assign_key(tx, key.id, org, None, "svc", "test", NOW))
        writes: list[str] = []
        store.db.set_trace_callback(lambda sql: writes.append(sql) if "INTO period_usage" in sql else None)
        base = 1000 if cap_usd is None else 2000
        kinds = await asyncio.gather(*(outcome(store, base + n, key.id, payer) for n in range(calls)))
        store.db.set_trace_callback(None)
        assert kinds == ["held"] * calls
        row = store.db.execute(
            "SELECT used, held FROM period_usage WHERE payer_id = ? AND what = 'overage'", (payer,)
        ).fetchone()
        await store.close()
        return writes, (row[0], row[1])

    writes, counted = asyncio.run(run(None))
    assert counted == (calls * HOLD // 2, 0)  # every settlement counted, every hold released
    assert len(writes) <= 2  # the holds' batch and the settlements' batch: one write each
    writes, counted = asyncio.run(run("1.00"))
    assert counted == (calls * HOLD // 2, 0)
    assert len(writes) == 2 * calls  # each hold and each settlement, at once
