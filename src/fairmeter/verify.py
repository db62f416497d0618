"""`fairmeter verify`: the books balance, no cap is exceeded, overruns and reconciliation listed."""

from __future__ import annotations

from typing import Any

from fairmeter.ledger.verify import Problem, verify_books
from fairmeter.money import usd_str
from fairmeter.store.protocol import Store


async def verify_store(store: Store) -> dict[str, Any]:
    """``{"balanced", "caps_ok", "problems": [...]}`` over the whole ledger, as of one instant (`Store.books`): safe
    to run while gateways write."""
    books = await store.books()
    balanced, caps_ok, problems = verify_books(books.accounts, books.transfers)
    flagged = {p.call_id for p in problems if p.kind == "overrun"}
    for row in books.reconciliation:
        if row["id"] in flagged:
            continue
        problems.append(
            Problem(
                "needs_reconciliation",
                f"call {row['id']} ({row['status']}) was billed {usd_str(row['billed_nano'])} USD from an estimate; "
                "check it against the provider's own usage export",
                call_id=row["id"],
            )
        )
    return {
        "balanced": balanced,
        "caps_ok": caps_ok,
        "pending_calls": books.pending_calls,
        "problems": [p.to_json() for p in problems],
    }
