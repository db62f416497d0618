"""Plain-text tables for the commands."""

from __future__ import annotations


def print_calls(rows: list[dict[str, object]]) -> None:
    """A table of call records, newest first."""
    print(
        f"{'call':<30} {'model':<18} {'stream':<6} {'status':<14} {'usage':<8} {'input':>6} {'c.read':>6} "
        f"{'c.write':>7} {'output':>6} {'reason.':>7} {'billed USD':>12}  note"
    )
    for r in rows:
        note = r.get("message") or r.get("error_code") or ""
        if not note and r.get("estimated"):
            note = "estimated: the stream ended before the provider's final usage"
        print(
            f"{r['id']!s:<30} {str(r['model'] or '-')[:18]:<18} {'yes' if r['stream'] else 'no':<6} "
            f"{r['status']!s:<14} {r['usage_status'] or '-'!s:<8} {_n(r['input_tokens']):>6} "
            f"{_n(r['cache_read_tokens']):>6} {_n(r['cache_write_tokens']):>7} {_n(r['output_tokens']):>6} "
            f"{_n(r['reasoning_tokens']):>7} {r['billed_usd']!s:>12}  {note}"
        )


def _n(v: object) -> str:
    return "-" if v is None else str(v)
