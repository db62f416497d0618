"""Shared by the admin API and CLI tests: a raw HTTP request, a paid call written through the funding SQL,
and a dump of every table an admin change can touch (to show that a refused change changed nothing)."""

from __future__ import annotations

import http.client
import json
import secrets
from typing import Any

from tests.conftest import Gw
from tests.sync_store import SyncStore

from fairmeter.ledger.funding import Size
from fairmeter.store import admin_sql, funding_sql
from fairmeter.store.records import key_account
from fairmeter.store.sql import Tx

ADMIN = "/fairmeter/v1/admin"
USD = 1_000_000_000
Reply = tuple[int, dict[str, str], Any]
TABLES = (
    "orgs", "teams", "users", "plans", "payers", "grants", "accounts", "transfers", "keys", "admin_log",
    "window_usage", "period_usage", "calls",
)  # fmt: skip
PRO = {
    "name": "pro",
    "windows": [
        {"name": "5h", "kind": "block", "hours": 5, "limit_usd": "5.00"},
        {"name": "weekly", "kind": "weekly", "anchor": "monday 09:00", "limit_usd": "50"},
    ],
}


def snapshot(store: SyncStore) -> dict[str, list[str]]:
    """Every row of every admin-reachable table, order-free."""

    async def dump(tx: Tx) -> dict[str, list[str]]:
        return {t: sorted(json.dumps(dict(r), sort_keys=True, default=str) for r in await tx.fetch(f"SELECT * FROM {t}"))
                for t in TABLES}  # fmt: skip

    out: dict[str, list[str]] = store.run(lambda s: s.run(dump))
    return out


def paid_call(store: SyncStore, payer_id: str, key_id: str, held: int, cost: int, now: float) -> str:
    """A call held and settled through the funding SQL (as the gateway's hot path does), with the record a
    refund reads; returns its id."""
    call_id = "call_" + secrets.token_hex(6)
    account = key_account(key_id)

    async def op(tx: Tx) -> None:
        h = await funding_sql.hold_funding(tx, call_id, payer_id, account, Size(held), now)
        assert h.held is not None, h.refusal
        text = funding_sql.allocation_json(h.held.allocation, h.held.spill_start, h.held.overage_start)
        s = await funding_sql.settle_funding(tx, call_id, payer_id, account, text, Size(cost), now, void=False)
        await tx.execute(
            "INSERT INTO calls (id, key_id, provider, api, status, started_at, payer_id, paid_json)"
            " VALUES ($1, $2, 'openai', 'chat', 'ok', $3, $4, $5)",
            call_id, key_id, now, payer_id, funding_sql.paid_json(s),
        )  # fmt: skip

    store.run(lambda s: s.run(op))
    return call_id


def log_of(store: SyncStore) -> list[dict[str, Any]]:
    """The admin log, oldest first."""
    rows: list[dict[str, Any]] = store.run(lambda s: s.run(lambda tx: admin_sql.admin_log(tx, 1000)))
    return rows[::-1]


def request(gw: Gw, method: str, path: str, secret: str | None, body: object = None, raw: bytes | None = None) -> Reply:
    """One raw HTTP request to the gateway; returns (status, lower-cased headers, decoded JSON)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"content-type": "application/json"}
    if secret is not None:
        headers["authorization"] = f"Bearer {secret}"
    conn = http.client.HTTPConnection("127.0.0.1", gw.server.port, timeout=10)
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(resp.read())
    finally:
        conn.close()
