"""`fairmeter replay`: every bundled cost case through the real gateway matches its worked answer."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from fairmeter.replay import replay_cases


def bundled_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    folder = resources.files("fairmeter.testing") / "cases"
    for name in ("sample.json", "cases.json"):
        cases += json.loads((folder / name).read_text(encoding="utf-8"))["cases"]
    return cases


def test_replay_matches_every_expected_field(tmp_path: Path) -> None:
    cases = bundled_cases()
    assert len(cases) >= 36
    lines = {line["id"]: line for line in replay_cases(cases, tmp_path)}
    mismatches = []
    for case in cases:
        got = lines[case["id"]]
        for field, want in case["expected"].items():
            if field not in got:
                continue
            have = got[field]
            if field == "cost_usd" and want is not None and have is not None:
                ok = Decimal(have) == Decimal(want)
            else:
                ok = have == want
            if not ok:
                mismatches.append(f"{case['id']}.{field}: expected {want!r}, replay gave {have!r}")
        if got["usage_status"] in ("partial", "unknown"):
            assert got["estimated"] is True, case["id"]
        if got["usage_status"] == "complete":
            assert Decimal(got["billed_usd"]) == Decimal(got["cost_usd"]).quantize(Decimal("1e-9")), case["id"]
    assert not mismatches, "\n".join(mismatches)


def test_replay_command_prints_one_json_line_per_case(tmp_path: Path) -> None:
    sample = resources.files("fairmeter.testing") / "cases" / "sample.json"
    target = tmp_path / "sample.json"
    target.write_text(sample.read_text(encoding="utf-8"), encoding="utf-8")
    exe = Path(sys.executable).parent / "fairmeter"
    out = subprocess.run([str(exe), "replay", str(target)], capture_output=True, text=True, check=True, timeout=120)
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert [x["id"] for x in lines] == [c["id"] for c in json.loads(target.read_text())["cases"]]
    for x in lines:
        assert set(x) >= {"id", "usage_status", "cost_usd", "billed_usd", "estimated", "cache_write_1h_tokens"}
