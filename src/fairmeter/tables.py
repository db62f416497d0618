"""Plain-text tables for the commands."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from fairmeter.ledger.windows import utc_text
from fairmeter.money import NANO_PER_USD, usd_text


def print_calls(rows: list[dict[str, object]]) -> None:
    """A table of call records, newest first (the first column as wide as the longest call id)."""
    w = id_width(r["id"] for r in rows)
    print(
        f"{'call':<{w}} {'model':<18} {'stream':<6} {'status':<14} {'usage':<8} {'input':>6} {'c.read':>6} "
        f"{'c.write':>7} {'output':>6} {'reason.':>7} {'billed USD':>12}  note"
    )
    for r in rows:
        note = r.get("message") or r.get("error_code") or ""
        if not note and r.get("estimated"):
            note = "estimated: the stream ended before the provider's final usage"
        print(
            f"{r['id']!s:<{w}} {str(r['model'] or '-')[:18]:<18} {'yes' if r['stream'] else 'no':<6} "
            f"{r['status']!s:<14} {r['usage_status'] or '-'!s:<8} {_n(r['input_tokens']):>6} "
            f"{_n(r['cache_read_tokens']):>6} {_n(r['cache_write_tokens']):>7} {_n(r['output_tokens']):>6} "
            f"{_n(r['reasoning_tokens']):>7} {r['billed_usd']!s:>12}  {note}"
        )


def id_width(ids: Iterable[object]) -> int:
    """The width of a column of call ids: the longest id, or the header "call"."""
    return max([len("call"), *(len(str(i)) for i in ids)])


def _n(v: object) -> str:
    return "-" if v is None else str(v)


def limits_text(lim: dict[str, Any]) -> str:
    """`fairmeter limits`: every window and bucket of a payer with used, held, limit, remaining, and when it resets.

    Times are rounded up to the minute like every sentence fairmeter writes; ``--json`` has the exact instants.
    """
    rows: list[tuple[str, ...]] = [("bucket", "used", "held", "limit", "remaining", "resets / expires")]
    for w in lim["windows"]:
        amount = money_text if w["unit"] == "usd" else _tokens
        when = "opens with the next call" if w["opens_with_next_call"] else f"resets {_when(w['resets_at'])}"
        rows.append((f"{w['label']} window ({w['name']})", *map(amount, (w["used"], w["held"], w["limit"],
                                                                          w["remaining"])), when))  # fmt: skip
    for g in lim["grants"]:
        used = Decimal(g["amount_usd"]) - Decimal(g["remaining_usd"]) - Decimal(g["held_usd"])
        rows.append((f"grant {g['id']} ({g['reason']})", money_text(str(used)), money_text(g["held_usd"]), money_text(
            g["amount_usd"]), money_text(g["remaining_usd"]), f"expires {_when(g['expires_at'])}"))  # fmt: skip
    rows.append(("purchased credits", "-", "-", "-", money_text(lim["credits"]["remaining_usd"]), "does not expire"))
    for cap, label in ((lim["spill_to_credits"], "spill to credits"), (lim["overage"], "overage")):
        state = f"{'on' if cap['enabled'] else 'off'}, per {cap['period']}"
        when = "never resets" if cap["resets_at"] is None else f"resets {_when(cap['resets_at'])}"
        limit = "no cap" if cap["cap_usd"] is None else money_text(cap["cap_usd"])
        left = "-" if cap["remaining_usd"] is None else money_text(cap["remaining_usd"])
        rows.append((f"{label} ({state})", money_text(cap["used_usd"]), "-", limit, left, when))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    head = f"payer {lim['payer_id']} on plan {lim['plan']}; burn order: {', '.join(lim['order'])}"
    lines = [f"{r[0]:<{widths[0]}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(r[1:5], widths[1:], strict=True))
             + f"  {r[5]}" for r in rows]  # fmt: skip
    return "\n".join([head, *lines])


def money_text(usd: str) -> str:
    """``"12.5"`` (an API amount) → ``$12.50``."""
    return usd_text(int(Decimal(usd) * NANO_PER_USD))


def _tokens(count: str | int) -> str:
    return f"{int(count):,} tokens"


def _when(stamp: str) -> str:
    return utc_text(datetime.fromisoformat(stamp).timestamp())
