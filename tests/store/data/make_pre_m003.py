"""How ``pre_m003.db`` was made: run with the package as it was before migration m003 (commit fe30fc0), e.g.

    git worktree add /tmp/old fe30fc0 && PYTHONPATH=/tmp/old/src .venv/bin/python tests/store/data/make_pre_m003.py OUT

Four calls of a subscriber (a 5-hour window, a grant, purchased credits and overage) resolved the old way, by
updating their holds' state: settled below its hold, voided, settled above it (an overrun), lapsed (expired);
two more left pending. Not a test: pytest collects nothing here.
"""

from __future__ import annotations

import asyncio
import sys

from fairmeter.store import Store, admin_sql, open_store
from fairmeter.store.records import CallEnd, CallStart

USD = 1_000_000_000
NOW = 1_795_000_000.0
PLAN = {
    "name": "sub",
    "windows": [{"name": "5h", "kind": "block", "hours": 5, "limit_usd": "0.5"}],
    "spill_to_credits": True,
    "overage_enabled": True,
}


def call(n: int, key_id: str, payer: str, reserved: int, prefix: str = "call_") -> CallStart:
    return CallStart(
        id=f"{prefix}{n:04d}", key_id=key_id, provider="openai", api="chat", model="m", stream=False,
        reserved=reserved, estimate=reserved // 4, prices_json=None, price_source=None, idempotency_key=None,
        started_at=NOW + n, lease_owner="gw-old", lease_expires_at=NOW + 600, payer_id=payer, tokens=1000,
    )  # fmt: skip


def end(billed: int) -> CallEnd:
    return CallEnd("ok", 200, "complete", None, str(billed), billed, False, None, NOW + 1, tokens=10)


async def subscriber(store: Store) -> tuple[str, str]:
    """A key whose payer holds from a subscription window, a grant, purchased credits and overage (in that
    order), so one call's hold spans several buckets; returns (key id, payer id). (tests/store/test_append_only.py
    uses it too.)"""
    await store.run(lambda tx: admin_sql.create_org(tx, "o", "test", NOW))
    await store.run(lambda tx: admin_sql.put_plan(tx, dict(PLAN), "test", NOW))
    payer = (await store.run(lambda tx: admin_sql.create_payer(tx, "o", None, "sub", {}, "test", NOW)))["id"]
    await store.run(lambda tx: admin_sql.add_grant(tx, payer, USD // 5, "promo", "test", NOW, expires_at=NOW + 9e5))
    await store.run(lambda tx: admin_sql.topup(tx, payer, USD // 5, "inv", "test", NOW))
    key, _ = await store.create_key("k", None, False, NOW)
    await store.run(lambda tx: admin_sql.assign_key(tx, key.id, "o", None, "test", "test", NOW))
    return key.id, payer


async def main(path: str) -> None:
    store = open_store(f"sqlite:///{path}", NOW)
    key_id, payer = await subscriber(store)
    calls = [call(n, key_id, payer, 3 * USD // 10, prefix="call_old") for n in range(6)]
    for c in calls:
        assert (await store.begin_call(c, 86_400)).kind == "held"
    await store.finish_call(calls[0].id, end(2 * USD // 10), NOW + 2)
    await store.finish_call(calls[1].id, end(0), NOW + 2, void=True)
    await store.finish_call(calls[2].id, end(3 * USD // 10 + 7), NOW + 2)
    await store.finish_call(calls[3].id, end(USD // 20), NOW + 2, expired=True, needs_reconciliation=True)
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
