"""bench/bare_proxy.py --ledger: the floor of a metering proxy commits each call's hold before it is forwarded
and settles the calls answered since, in that same transaction; a hold that does not fit under the cap fails."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from bare_proxy import FloorLedger


def read(path: Path) -> tuple[tuple[int, int], list[tuple[str, int, int, str]]]:
    """What another connection sees: committed rows only."""
    with sqlite3.connect(path) as db:
        account = db.execute("SELECT pending, posted FROM account").fetchone()
        calls = db.execute("SELECT * FROM calls ORDER BY id").fetchall()
    return account, calls


def test_a_hold_is_committed_before_forwarding_and_settled_with_the_next(tmp_path: Path) -> None:
    path = tmp_path / "floor.db"
    ledger = FloorLedger(str(path))
    first = ledger.hold()
    assert read(path) == ((FloorLedger.HOLD, 0), [(first, FloorLedger.HOLD, 0, "pending")])
    ledger.answered.append(first)  # its answer was relayed
    second = ledger.hold()
    account, calls = read(path)
    assert account == (FloorLedger.HOLD, FloorLedger.COST)
    assert calls == [(first, FloorLedger.HOLD, FloorLedger.COST, "ok"), (second, FloorLedger.HOLD, 0, "pending")]
    assert ledger.answered == []


def test_a_hold_over_the_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "floor.db"
    ledger = FloorLedger(str(path))
    ledger.db.execute("UPDATE account SET cap = ?", (FloorLedger.HOLD,))
    ledger.hold()
    with pytest.raises(RuntimeError, match="cap reached"):
        ledger.hold()
    assert not ledger.db.in_transaction
    assert read(path)[0] == (FloorLedger.HOLD, 0)
