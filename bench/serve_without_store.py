"""`fairmeter serve` with the store's per-call work taken out: a measurement, never a build to run.

    python bench/serve_without_store.py serve --config FILE --port N

``begin_call`` answers "held" at once, ``mark_forwarded`` and ``finish_call`` do nothing; everything else of a call
(the key, the request's parsing and worst case, the quote, the relay, the response's usage and price) still runs.
`bench/instructions.py --without-store` counts it beside the gateway, so the difference is what the store's two
group commits per call (the ledger, the funding leg, the call record) cost in instructions. Its books are wrong by
design: nothing is held, settled or recorded.
"""

from __future__ import annotations

import sys
from typing import Any

from fairmeter.cli import main
from fairmeter.store import sqlite
from fairmeter.store.records import HoldOutcome


async def _held(self: sqlite.SQLiteStore, call: Any, ttl_s: int) -> HoldOutcome:
    return HoldOutcome("held")


def _nothing(self: sqlite.SQLiteStore, call_id: str) -> None:
    return None


async def _settled(self: sqlite.SQLiteStore, *args: Any, **kwargs: Any) -> int:
    return 0


if __name__ == "__main__":
    sqlite.SQLiteStore.begin_call = _held  # type: ignore[method-assign]
    sqlite.SQLiteStore.mark_forwarded = _nothing  # type: ignore[method-assign]
    sqlite.SQLiteStore.finish_call = _settled  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
