"""`fairmeter demo` end to end, as a user runs it: both parts, exit status 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_demo_shows_who_paid_and_balances(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("fairmeter")
    out = subprocess.run([str(script), "demo", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "total billed: $" in text and "books balanced: True, caps ok: True" in text
    part2 = text.split("Part 2:", 1)[1]
    assert "nothing: 5-hour allowance" in part2 and "nothing: weekly allowance" in part2
    assert "resets " in part2 and "pay-as-you-go credits are off for this account" in part2
    rows = [line for line in part2.splitlines() if line.startswith("call_")]
    payers = [line.split("  ")[-1] for line in rows]
    first_grant = next(i for i, p in enumerate(payers) if "grant $" in p)
    first_credits = next(i for i, p in enumerate(payers) if "credits $" in p)
    assert first_grant <= first_credits  # the grant burns before the purchased credits
    assert "books balanced after both parts: True, caps ok: True" in text
    # both tables line up: each row's second column starts where its header's does
    for table, second in ((text.split("Part 2:", 1)[0], "model"), (part2, "when")):
        lines = table.splitlines()
        head = next(line for line in lines if line.startswith("call "))
        rows = [line for line in lines if line.startswith("call_")]
        assert rows and all(row[head.index(second) - 1] == " " != row[head.index(second)] for row in rows), table
