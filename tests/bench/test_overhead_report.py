"""bench/overhead.py's report: with several rounds, each proxy figure is taken against its own round's direct run,
and the table gives the median of the rounds (the figures in docs/performance.md come from it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from overhead import Point, beyond_bare_report, floor_report, print_report, targets_report  # noqa: E402
from procs import WrkResult, cpu_ticks, steal_share  # noqa: E402


def point(target: str, rnd: int, rps: float, p50_us: int, cpu: float | None = None) -> Point:
    wrk = WrkResult(int(rps * 10), int(rps * 10), 10.0, p50_us, p50_us, p50_us * 2, float(p50_us), 0)
    return Point(target, 1, False, wrk, cpu, rnd)


def test_each_round_is_compared_with_its_own_direct_run(capsys: pytest.CaptureFixture[str]) -> None:
    # The direct call doubles its speed each round; the gateway keeps half of it in every round.
    points = [
        point("direct", 0, 1000, 100), point("gateway", 0, 500, 600, 0.5),
        point("direct", 1, 2000, 50), point("gateway", 1, 1000, 450, 0.4),
        point("direct", 2, 4000, 25), point("gateway", 2, 2000, 725, 0.7),
    ]  # fmt: skip
    rows = print_report(points, ["gateway"])
    gateway = next(r for r in rows if r["target"] == "gateway")
    assert gateway["share_of_direct"] == 0.5  # each round's own share (against round 0's direct: 0.5, 1, 2)
    assert gateway["added_p50_ms"] == 0.5  # the rounds added 0.5, 0.4 and 0.7 ms: the median
    assert gateway["cpu_ms_per_request"] == 0.5
    assert gateway["rounds"]["added50"] == [0.5, 0.4, 0.7]
    out = capsys.readouterr().out
    assert "medians of 3 rounds" in out
    assert "+p50 0.40–0.70 ms, 50.0–50.0 % of direct" in out


def test_one_round_prints_no_ranges(capsys: pytest.CaptureFixture[str]) -> None:
    rows = print_report([point("direct", 0, 1000, 100), point("gateway", 0, 250, 400, 0.3)], ["gateway"])
    gateway = next(r for r in rows if r["target"] == "gateway")
    assert gateway["share_of_direct"] == 0.25
    assert gateway["added_p50_ms"] == 0.3
    assert gateway["rounds"] is None
    assert "range" not in capsys.readouterr().out


def row(target: str, c: int, rps: float, added_ms: float, cpu: float) -> dict[str, object]:
    return {"target": target, "connections": c, "stream": False, "rps": rps, "added_p50_ms": added_ms,
            "cpu_ms_per_request": cpu}  # fmt: skip


def test_the_reading_against_the_bare_proxy(capsys: pytest.CaptureFixture[str]) -> None:
    """fairmeter's cost beyond this run's bare proxy, against 0.5 − 0.17 ms, 15 of 33 % and 0.3 − 0.1 ms."""
    rows = [row("gateway", 1, 1500, 0.55, 0.64), row("bare", 1, 2700, 0.25, 0.26),
            row("gateway", 64, 5000, 10.0, 0.36), row("bare", 64, 7000, 6.7, 0.14)]  # fmt: skip
    out = {r["reading"]: r for r in beyond_bare_report(rows)}
    assert out["added p50 beyond the bare proxy, c=1"]["value"] == 0.3
    assert out["added p50 beyond the bare proxy, c=1"]["within"] is True  # 0.30 <= 0.33
    assert out["throughput as a share of the bare proxy's, c=64"]["value"] == pytest.approx(71.4286)
    assert out["throughput as a share of the bare proxy's, c=64"]["within"] is True  # >= 45 %
    assert out["CPU per request beyond the bare proxy, c=1"]["within"] is False  # 0.38 > 0.2
    assert out["CPU per request beyond the bare proxy, c=64"]["within"] is False  # 0.22 > 0.2
    assert "the targets above decide" in capsys.readouterr().out
    rows[2] = row("gateway", 64, 3000, 10.0, 0.30)  # 43 % of the bare proxy's throughput, 0.16 ms beyond its CPU
    out = {r["reading"]: r for r in beyond_bare_report(rows)}
    assert out["throughput as a share of the bare proxy's, c=64"]["within"] is False
    assert out["CPU per request beyond the bare proxy, c=64"]["within"] is True


def test_no_reading_without_the_bare_proxy() -> None:
    assert beyond_bare_report([row("gateway", 1, 1500, 0.55, 0.64), row("gateway", 64, 5000, 10.0, 0.36)]) == []


def test_the_cpu_target_is_checked_at_both_concurrencies() -> None:
    """One CPU target (0.3 ms), two verdicts: under load (c=64) and one call at a time (c=1)."""
    rows = [{**row("gateway", c, 1000, 0.4, cpu), "stream": stream} for c, cpu in ((1, 0.62), (64, 0.27))
            for stream in (False, True)]  # fmt: skip
    for r in rows:
        r["share_of_direct"] = 0.2
    out = {t["target"]: t for t in targets_report(rows, 60.0, 0.3)}
    assert out["CPU per non-streamed request, c=64"]["met"] is True
    assert out["CPU per non-streamed request, c=1"]["met"] is False
    assert out["CPU per non-streamed request, c=1"]["value"] == 0.62


def test_the_cpu_target_against_a_metering_proxys_floor(capsys: pytest.CaptureFixture[str]) -> None:
    """--with-floor: the bare proxy plus a hold committed per call, read against the 0.3 ms CPU target."""
    rows = [row("gateway", 1, 1500, 0.55, 0.64), row("floor", 1, 2500, 0.3, 0.36),
            row("gateway", 64, 5000, 10.0, 0.30), row("floor", 64, 6000, 8.0, 0.21)]  # fmt: skip
    out = {r["reading"]: r for r in floor_report(rows)}
    assert out["floor of a metering proxy, CPU per request, c=1"]["value"] == 0.36
    assert out["floor of a metering proxy, CPU per request, c=1"]["within"] is False
    # fairmeter's own metering beyond the floor (0.64 − 0.36), against what the target leaves it (0.3 − 0.36 < 0)
    assert out["fairmeter beyond the floor, CPU per request, c=1"]["value"] == 0.28
    assert out["fairmeter beyond the floor, CPU per request, c=1"]["within"] is False
    assert len(out) == 2  # at c=64 the floor commits per request, where a group commit shares one: not a floor
    rows[1] = row("floor", 1, 2500, 0.3, 0.16)
    out = {r["reading"]: r for r in floor_report(rows)}
    assert out["floor of a metering proxy, CPU per request, c=1"]["within"] is True
    assert out["fairmeter beyond the floor, CPU per request, c=1"]["goal"] == "<= 0.140 ms"
    assert out["fairmeter beyond the floor, CPU per request, c=1"]["within"] is False  # 0.48 > 0.14
    rows[0] = row("gateway", 1, 1500, 0.45, 0.28)
    assert floor_report(rows)[1]["within"] is True  # 0.12 <= 0.14
    assert "metering proxy's floor" in capsys.readouterr().out
    assert floor_report(rows[0::2]) == []  # run without --with-floor


def test_steal_is_the_hosts_share_of_the_machines_time() -> None:
    assert steal_share((1000, 10), (1400, 110)) == 25.0  # 100 of the 400 ticks between the readings
    assert steal_share((1000, 10), (1000, 10)) == 0.0  # no time passed: no share, no division by zero
    total, steal = cpu_ticks()  # this machine's /proc/stat
    assert total > 0 and 0 <= steal <= total
    assert cpu_ticks()[0] >= total


def test_a_run_at_one_concurrency_reads_only_its_targets() -> None:
    """`--concurrency 1`: the c=64 targets and the reading against the bare proxy are left out, not a crash."""
    rows = [{**row(target, 1, 1000, 0.45, 0.62), "stream": stream, "share_of_direct": 0.2}
            for target in ("gateway", "bare") for stream in (False, True)]  # fmt: skip
    out = {t["target"]: t for t in targets_report(rows, 60.0, 0.3)}
    assert set(out) == {"added p50, c=1, not streamed", "added p50, c=1, streamed", "CPU per non-streamed request, c=1",
                        "peak RSS (all gateway processes)", "start to first answered call"}  # fmt: skip
    assert out["added p50, c=1, not streamed"]["met"] is True  # 0.45 <= 0.5
    assert out["CPU per non-streamed request, c=1"]["met"] is False  # 0.62 > 0.3
    assert beyond_bare_report(rows) == []
