"""What fairmeter costs on top of calling the provider directly (`make bench`).

Starts the provider emulator and the gateway as separate processes and loads both with wrk in the
same run: OpenAI chat completions (gpt-4o-mini) with a 1 KB prompt and ``max_tokens`` 500, plain and
streamed (20 chunks), at concurrency 1 and 64. For each of the four points it prints the latency the
gateway adds at p50 and p99, its throughput as a share of direct, and its CPU time per request;
then the gateway's peak RSS and the time from spawning ``fairmeter serve`` to its first answered
call. Every figure is a ratio or difference against the direct call measured in the same run, on
the same machine; nothing is asserted on timings. The gateway runs with ``--workers`` processes (default:
one per core, as one would deploy it); its CPU is summed over them, and its memory is the peak of their
summed PSS (each shared page counted once), or one process's VmHWM.

Afterwards the ledger is checked: ``fairmeter verify`` must report balanced books, and the calls
recorded must equal the requests wrk sent (completed, plus those in flight when wrk's timer
stopped, which the gateway still settles). A failed check is the only non-zero exit.

    python bench/overhead.py [--duration 6] [--warmup 2] [--workers N] [--rounds N] [--with-bare] [--with-floor]
                             [--with-nostore] [--compare-clients] [--json OUT]

``--with-bare`` also measures bench/bare_proxy.py (a pass-through proxy with no metering) in the
same run, and adds a second reading after the targets: fairmeter's cost beyond that proxy, against what the
targets leave beyond the bare proxy the issue measured on its machine (the targets alone decide).
``--with-floor`` adds the bare proxy on the gateway's own HTTP layers ("bare-fm", ``--client fairmeter``) and the
same with ``--ledger`` ("floor"): the least a proxy that commits each call's hold before forwarding must do
(bench/bare_proxy.py), so the CPU target can be read against what such a proxy costs on this machine before any
parsing, pricing or double entry.
``--with-nostore`` adds the gateway with its store's per-call work taken out ("no-store",
bench/serve_without_store.py: nothing is held, settled or recorded, everything else of a call runs), with as many
workers as the gateway; with ``--with-floor`` too, a last reading splits the gateway's CPU per request into its
HTTP layers (bare-fm), the request path beyond them (no-store − bare-fm) and the store (gateway − no-store).
``--compare-clients`` adds the bare proxy on httpx2 instead of aiohttp. ``--rounds N`` measures every point N
times, each round against its own direct run, and reports the medians with their range: on a shared VM whose
speed drifts within minutes, one round can land a figure on either side of a target.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from procs import (
    BENCH,
    Server,
    WrkResult,
    cpu_ticks,
    ensure_wrk,
    fairmeter_cmd,
    free_port,
    machine,
    nostore_cmd,
    run_wrk,
    steal_share,
)

UPSTREAM_KEY = "bench-upstream-key"
DATABASES: list[str] = []  # PostgreSQL databases made for this run, dropped at its end unless --keep
STREAM_CHUNKS = 20
PATH = "/v1/chat/completions"
# A 1 KB (1,024-byte) user prompt of ordinary English text.
PROMPT = (
    "Summarise the following meeting notes for a busy engineering manager, keeping every decision, "
    "owner and date, and flag anything that looks like a risk to the release. "
) * 8
PROMPT = PROMPT[:1024]


@dataclass(frozen=True, slots=True)
class Point:
    """One measured (target, concurrency, stream) combination."""

    target: str  # direct | gateway | bare | bare-httpx | bare-fm | floor
    connections: int
    stream: bool
    wrk: WrkResult
    cpu_ms_per_request: float | None
    round: int = 0  # with --rounds N: which of the N rounds (each compares with its own direct run)
    steal_pct: float = 0.0  # the share of the machine's CPU time the VM's host took while it was measured


def request_body(stream: bool) -> bytes:
    body: dict[str, object] = {
        "model": "gpt-4o-mini",
        "max_tokens": 500,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def write_config(path: Path, db: Path | str, emulator_port: int) -> None:
    url = db if isinstance(db, str) else f"sqlite:///{db}"
    path.write_text(
        f'database_url = "{url}"\n'
        "[upstreams.openai]\n"
        f'base_url = "http://127.0.0.1:{emulator_port}/v1"\n'
        'api_key_env = "BENCH_UPSTREAM_KEY"\n'
        "[upstreams.anthropic]\n"
        f'base_url = "http://127.0.0.1:{emulator_port}"\n'
        'api_key_env = "BENCH_UPSTREAM_KEY"\n'
    )


def create_key(config: Path) -> str:
    out = subprocess.run(
        [*fairmeter_cmd(), "keys", "create", "--name", "bench", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return str(json.loads(out)["key"])


def start_gateway(
    config: Path, port: int, log: Path, key: str, workers: int = 1, cmd: list[str] | None = None, name: str = "gateway"
) -> tuple[Server, float]:
    """Spawn ``fairmeter serve`` (``cmd``: another command's ``serve``) and poll with a real chat completion until one
    is answered with 200."""
    body = request_body(False)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + key}
    t0 = time.perf_counter()
    server = Server(
        name,
        [*(cmd or fairmeter_cmd()), "serve", "--config", str(config), "--port", str(port), "--workers", str(workers)],
        port,
        log,
        {"BENCH_UPSTREAM_KEY": UPSTREAM_KEY},
    )
    deadline = t0 + 60
    while time.perf_counter() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {server.proc.returncode}:\n{log.read_text()}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("POST", PATH, body=body, headers=headers)
            status = conn.getresponse().status
        except OSError:
            time.sleep(0.005)
            continue
        finally:
            conn.close()
        if status == 200:
            return server, time.perf_counter() - t0
        raise RuntimeError(f"the gateway answered the first call with {status}:\n{log.read_text()}")
    raise RuntimeError("the gateway did not answer within 60 s")


def measure(
    target: str,
    port: int,
    proc: Server | None,
    auth: str,
    c: int,
    stream: bool,
    bodies: dict[bool, Path],
    a: argparse.Namespace,
    rnd: int = 0,
) -> tuple[Point, int, int]:
    """Warm up, then measure one point; returns it and the requests wrk sent and completed in both runs."""
    url = f"http://127.0.0.1:{port}{PATH}"
    chunks = STREAM_CHUNKS if stream else None
    warm = run_wrk(url, c, a.warmup, bodies[stream], auth, chunks)
    time.sleep(0.3)  # let calls still in flight from the warm-up settle before the CPU reading
    before, ticks = proc.cpu_ms() if proc else 0.0, cpu_ticks()
    result = run_wrk(url, c, a.duration, bodies[stream], auth, chunks)
    cpu = (proc.cpu_ms() - before) / result.requests if proc and result.requests else None
    point = Point(target, c, stream, result, cpu, rnd, steal_share(ticks, cpu_ticks()))
    print(
        f"  {target:<10} c={c:<3} {'stream' if stream else 'plain ':<6} {result.rps:>9.0f} rps"
        f"  p50 {result.p50_us / 1000:7.2f} ms  p99 {result.p99_us / 1000:7.2f} ms  steal {point.steal_pct:4.1f} %"
        + (f"  cpu {cpu:.3f} ms/req" if cpu is not None else "")
        + (f"  errors {result.errors}" if result.errors else ""),
        flush=True,
    )
    return point, warm.issued + result.issued, warm.requests + result.requests


def calls_by_status(db: Path | str) -> dict[str, int]:
    """How many call records of each status the gateway wrote (SQLite file or PostgreSQL URL)."""
    if isinstance(db, str):
        import asyncio

        import asyncpg

        async def count() -> dict[str, int]:
            conn = await asyncpg.connect(db)
            try:
                rows = await conn.fetch("SELECT status, COUNT(*) FROM calls GROUP BY status")
            finally:
                await conn.close()
            return {r[0]: int(r[1]) for r in rows}

        return asyncio.run(count())
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return dict(conn.execute("SELECT status, COUNT(*) FROM calls GROUP BY status").fetchall())


def ledger_check(config: Path, db: Path | str, sent: int, completed: int) -> dict[str, object]:
    """``fairmeter verify`` plus the call count against what wrk sent."""
    verify = subprocess.run(
        [*fairmeter_cmd(), "verify", "--config", str(config), "--json"], capture_output=True, text=True, check=False
    )
    report = json.loads(verify.stdout)
    by_status = calls_by_status(db)
    recorded = sum(by_status.values())
    return {
        "verify": report,
        "verify_exit": verify.returncode,
        "calls_recorded": recorded,
        "calls_by_status": by_status,
        "requests_sent": sent,
        "requests_completed": completed,
        "ok": bool(report["balanced"]) and report["caps_ok"] and report["pending_calls"] == 0 and recorded == sent,
    }


def pairs(points: list[Point], target: str, c: int, stream: bool) -> list[tuple[Point, Point]]:
    """Each round's (direct, target) points of one combination: a figure always compares within its round."""
    out = []
    for r in sorted({p.round for p in points}):
        mine = [p for p in points if p.round == r and p.connections == c and p.stream == stream]
        direct = next((p for p in mine if p.target == "direct"), None)
        other = next((p for p in mine if p.target == target), None)
        if direct and other:
            out.append((direct, other))
    return out


def _spread(values: list[float], fmt: str) -> str:
    """``min–max`` of the rounds' values (empty for one round)."""
    return "" if len(values) < 2 else f"{format(min(values), fmt)}–{format(max(values), fmt)}"


def print_report(points: list[Point], targets: list[str]) -> list[dict[str, object]]:
    """The comparison table and the targets; returns the table rows (for --json).

    With several rounds every figure is the median of the rounds' figures, each taken against the direct run
    of its own round (minutes apart at most), and a second line gives their range.
    """
    rows: list[dict[str, object]] = []
    rounds = len({p.round for p in points})
    print()
    if rounds > 1:
        print(f"medians of {rounds} rounds (each against its own round's direct run); under each, the range")
    print(
        f"{'target':<11}{'conc':>5} {'stream':<7}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'+p50 ms':>9}{'+p99 ms':>9}{'of direct':>10}{'cpu ms/req':>11}{'steal':>7}"
    )
    for stream in (False, True):
        for c in (1, 64):
            for target in ["direct", *targets]:
                found = pairs(points, target, c, stream)
                if not found:
                    continue
                per = {
                    "rps": [p.wrk.rps for _, p in found],
                    "p50": [p.wrk.p50_us / 1000 for _, p in found],
                    "p99": [p.wrk.p99_us / 1000 for _, p in found],
                    "added50": [(p.wrk.p50_us - d.wrk.p50_us) / 1000 for d, p in found],
                    "added99": [(p.wrk.p99_us - d.wrk.p99_us) / 1000 for d, p in found],
                    "ratio": [p.wrk.rps / d.wrk.rps for d, p in found],
                    "cpu": [p.cpu_ms_per_request for _, p in found if p.cpu_ms_per_request is not None],
                    "steal": [p.steal_pct for _, p in found],
                }
                med = {k: statistics.median(v) if v else None for k, v in per.items()}
                is_direct = target == "direct"
                row = {
                    "target": target,
                    "connections": c,
                    "stream": stream,
                    "rps": round(med["rps"] or 0, 1),
                    "p50_ms": med["p50"],
                    "p99_ms": med["p99"],
                    "added_p50_ms": None if is_direct else round(med["added50"] or 0, 3),
                    "added_p99_ms": None if is_direct else round(med["added99"] or 0, 3),
                    "share_of_direct": None if is_direct else round(med["ratio"] or 0, 4),
                    "cpu_ms_per_request": None if med["cpu"] is None else round(med["cpu"], 4),
                    "steal_pct": round(med["steal"] or 0, 1),
                    "requests": sum(p.wrk.requests for _, p in found),
                    "errors": sum(p.wrk.errors for _, p in found),
                    "rounds": {k: [round(x, 4) for x in v] for k, v in per.items()} if rounds > 1 else None,
                }
                rows.append(row)
                cpu = "" if med["cpu"] is None else f"{med['cpu']:.3f}"
                deltas = f"{'':9}{'':9}{'':10}"
                if not is_direct:
                    deltas = f"{med['added50']:9.2f}{med['added99']:9.2f}{(med['ratio'] or 0) * 100:9.1f}%"
                print(
                    f"{target:<11}{c:>5} {'yes' if stream else 'no':<7}{med['rps'] or 0:>9.0f}"
                    f"{med['p50'] or 0:>9.2f}{med['p99'] or 0:>9.2f}{deltas}{cpu:>11}{med['steal'] or 0:>6.1f}%"
                )
                if rounds > 1:
                    spread = f"rps {_spread(per['rps'], '.0f')}"
                    if not is_direct:
                        ratio_pct = [x * 100 for x in per["ratio"]]
                        spread += f", +p50 {_spread(per['added50'], '.2f')} ms, {_spread(ratio_pct, '.1f')} % of direct"
                        spread += f", cpu {_spread(per['cpu'], '.3f')} ms/req" if per["cpu"] else ""
                    print(f"{'':18}range: {spread}")
        print()
    return rows


# The bare pass-through proxy as issue 3 measured it on its machine (the upper end of each range it gives): the
# targets restated against it are what fairmeter may cost beyond being a Python proxy at all.
ISSUE_BARE = {"added_p50_ms": 0.17, "share_of_direct": 0.33, "cpu_ms_per_request": 0.1}


def _getter(rows: list[dict[str, object]], target: str) -> Callable[[int, bool, str], float]:
    def get(c: int, stream: bool, field: str) -> float:
        for r in rows:
            if r["target"] == target and r["connections"] == c and r["stream"] == stream:
                value = r[field]
                assert isinstance(value, (int, float))
                return float(value)
        raise KeyError((target, c, stream, field))

    return get


def beyond_bare_report(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """A second reading, not the targets: what fairmeter costs beyond this run's bare proxy, against what the
    issue's targets leave beyond the bare proxy it measured (0.5 − 0.17 ms; 15 of 33 %; 0.3 − 0.1 ms). The VM's
    phase moves the bare proxy and the gateway together; this reading shows fairmeter's own share."""
    gw, bare = _getter(rows, "gateway"), _getter(rows, "bare")
    try:
        bare(1, False, "rps")
        bare(64, False, "rps")
    except KeyError:  # run without --with-bare, or at one concurrency only
        return []
    most_ms = 0.5 - ISSUE_BARE["added_p50_ms"]
    least_pct = 100 * 0.15 / ISSUE_BARE["share_of_direct"]
    most_cpu = 0.3 - ISSUE_BARE["cpu_ms_per_request"]
    added = gw(1, False, "added_p50_ms") - bare(1, False, "added_p50_ms")
    share = 100 * gw(64, False, "rps") / bare(64, False, "rps")
    checks: list[tuple[str, float, str, bool]] = [
        ("added p50 beyond the bare proxy, c=1", added, f"<= {most_ms:.2f} ms", added <= most_ms),
        ("throughput as a share of the bare proxy's, c=64", share, f">= {least_pct:.0f} %", share >= least_pct),
    ]
    for c in (1, 64):
        extra = gw(c, False, "cpu_ms_per_request") - bare(c, False, "cpu_ms_per_request")
        name = f"CPU per request beyond the bare proxy, c={c}"
        checks.append((name, extra, f"<= {most_cpu:.1f} ms", extra <= most_cpu))
    title = "against this run's bare proxy (a second reading; the targets above decide)"
    return _verdicts(title, checks, ("reading", "within"), ("within", "over"))


def floor_report(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """With ``--with-floor``: the CPU per request, at concurrency 1, of the least a metering proxy must do (the bare
    proxy on the gateway's own HTTP layers, plus a capped hold committed before forwarding), against the 0.3 ms
    target; what is left under the target is what the metering itself (parsing, worst case, price, double entry,
    funding, the call record) may cost. One call at a time no design can share a commit between calls. (At c=64
    the floor commits once per request, where a group commit shares one among many calls: there it is no floor,
    and it is not read.)"""
    floor = _getter(rows, "floor")
    try:
        cpu = floor(1, False, "cpu_ms_per_request")
    except KeyError:
        return []
    checks = [("floor of a metering proxy, CPU per request, c=1", cpu, "<= 0.3 ms", cpu <= 0.3)]
    try:
        metering = _getter(rows, "gateway")(1, False, "cpu_ms_per_request") - cpu
    except KeyError:
        pass
    else:  # what fairmeter's metering costs beyond the floor, against what the target leaves it
        room = 0.3 - cpu
        name = "fairmeter beyond the floor, CPU per request, c=1"
        checks.append((name, metering, f"<= {room:.3f} ms", metering <= room))
    title = "the CPU target against a metering proxy's floor (own HTTP layers + a hold committed per call)"
    return _verdicts(title, checks, ("reading", "within"), ("within", "over"))


def split_report(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """With ``--with-floor`` and ``--with-nostore``: the gateway's CPU per non-streamed request in three parts, from
    three processes of this run: its HTTP layers (bare-fm: the same upstream client and server protocol, nothing
    else), the request path beyond them (the gateway without its store, less bare-fm: the key, parsing, the worst
    case, the relay, usage, price) and the store (the gateway less the gateway without its store: the hold's and the
    settlement's transactions, the call record). Differences of medians, so the parts are readings, not a sum."""
    gw, nostore, http = _getter(rows, "gateway"), _getter(rows, "no-store"), _getter(rows, "bare-fm")
    out: list[dict[str, object]] = []
    for c in (1, 64):
        try:
            cpu = [f(c, False, "cpu_ms_per_request") for f in (gw, nostore, http)]
        except KeyError:  # not measured (--concurrency), or run without --with-nostore or --with-floor
            continue
        if not out:
            print("the gateway's CPU per non-streamed request, in parts (ms)")
        parts = {"http_layers": cpu[2], "request_path": cpu[1] - cpu[2], "store": cpu[0] - cpu[1], "gateway": cpu[0]}
        print(f"  c={c:<3} " + "  ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in parts.items()))
        out.append({"c": c, **{k: round(v, 4) for k, v in parts.items()}})
    return out


def _verdicts(
    title: str, checks: list[tuple[str, float, str, bool]], keys: tuple[str, str], words: tuple[str, str]
) -> list[dict[str, object]]:
    """Print ``title`` and one line per check (name, value, goal, verdict); return them as JSON rows whose name
    and verdict are under ``keys``."""
    print(title)
    out: list[dict[str, object]] = []
    for name, value, goal, ok in checks:
        print(f"  {name:<50} {value:9.3f}  {goal:<10} {words[0] if ok else words[1]}")
        out.append({keys[0]: name, "value": round(value, 4), "goal": goal, keys[1]: ok})
    return out


def targets_report(rows: list[dict[str, object]], rss_mb: float, start_s: float) -> list[dict[str, object]]:
    """Each of fairmeter's targets, met or not, from this run's figures (a point not measured is not read)."""
    get = _getter(rows, "gateway")
    # The issue gives one CPU target and does not say at which concurrency; its bare proxy's "about 0.1 ms" is a
    # figure under load (here the bare proxy uses ~0.13-0.16 ms at c=64, ~0.25 ms at c=1). Both are checked.
    wanted: list[tuple[str, int, bool, str, float, str, float, str]] = [  # name, point, field, scale, goal
        ("added p50, c=1, not streamed", 1, False, "added_p50_ms", 1, "<=", 0.5, "ms"),
        ("added p50, c=1, streamed", 1, True, "added_p50_ms", 1, "<=", 1, "ms"),
        ("throughput share, c=64, not streamed", 64, False, "share_of_direct", 100, ">=", 15, "%"),
        ("CPU per non-streamed request, c=64", 64, False, "cpu_ms_per_request", 1, "<=", 0.3, "ms"),
        ("CPU per non-streamed request, c=1", 1, False, "cpu_ms_per_request", 1, "<=", 0.3, "ms"),
    ]
    checks: list[tuple[str, float, str, bool]] = []
    for name, c, stream, field, scale, op, bound, unit in wanted:
        try:
            value = get(c, stream, field) * scale
        except KeyError:  # that concurrency was not measured (--concurrency)
            continue
        checks.append((name, value, f"{op} {bound:g} {unit}", value >= bound if op == ">=" else value <= bound))
    checks.append(("peak RSS (all gateway processes)", rss_mb, "<= 100 MB", rss_mb <= 100))
    checks.append(("start to first answered call", start_s, "< 1 s", start_s < 1.0))
    return _verdicts("targets", checks, ("target", "met"), ("met", "NOT MET"))


def main() -> int:
    p = argparse.ArgumentParser(description="fairmeter overhead benchmark (emulator direct vs through the gateway)")
    p.add_argument("--duration", type=float, default=6.0, help="seconds measured per point (default 6)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per point (default 2)")
    p.add_argument("--with-bare", action="store_true", help="also measure bench/bare_proxy.py (aiohttp)")
    p.add_argument("--compare-clients", action="store_true", help="also the bare proxy on httpx2 (implies --with-bare)")
    p.add_argument(
        "--with-floor", action="store_true", help="also the bare proxy with a hold committed per call (--ledger)"
    )
    p.add_argument(
        "--with-nostore",
        action="store_true",
        help="also the gateway without its store's per-call work (bench/serve_without_store.py)",
    )
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 64], help=argparse.SUPPRESS)
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every point this many times, each round against its own direct run, and report medians",
    )
    p.add_argument("--json", type=Path, help="write every figure to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, database)")
    p.add_argument("--postgres", action="store_true", help="the gateway on a fresh PostgreSQL database, not SQLite")
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="gateway processes (`fairmeter serve --workers`; default: one per core, %(default)s here)",
    )
    a = p.parse_args()
    ensure_wrk()
    info = machine()
    print(
        f"machine: nproc={info['nproc']}  cpu: {info['cpu']}  RAM {info['ram_gib']} GiB  kernel {info['kernel']}"
        f"  python {info['python']}  {info['wrk']}  load average {info['loadavg_at_start']:.2f}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="fairmeter-bench-"))
    servers: list[Server] = []
    try:
        return run(a, info, tmp, servers)
    finally:
        for s in reversed(servers):
            s.stop()
        if a.keep:
            print(f"kept {tmp}" + "".join(f" and {d}" for d in DATABASES))
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            if DATABASES:
                from ledger import drop_pg_database

                for d in DATABASES:
                    drop_pg_database(d)


def run(a: argparse.Namespace, info: dict[str, object], tmp: Path, servers: list[Server]) -> int:
    bodies = {False: tmp / "plain.json", True: tmp / "stream.json"}
    for stream, path in bodies.items():
        path.write_bytes(request_body(stream))
    emu_port = free_port()
    emulator = Server(
        "emulator", [*fairmeter_cmd(), "emulator", "--port", str(emu_port)], emu_port, tmp / "emulator.log"
    )
    servers.append(emulator)
    emulator.wait_listening()

    db: Path | str = tmp / "fm.db"
    config = tmp / "fairmeter.toml"
    if a.postgres:
        from ledger import pg_database

        pg = pg_database()
        if pg is None:
            raise SystemExit("--postgres: the PostgreSQL server at 127.0.0.1:5432 is not reachable")
        DATABASES.append(pg)
        db = pg
    print(f"gateway database: {db if isinstance(db, str) else 'SQLite file ' + str(db)}", flush=True)
    write_config(config, db, emu_port)
    key = create_key(config)
    gw_port = free_port()
    gateway, start_s = start_gateway(config, gw_port, tmp / "gateway.log", key, a.workers)
    servers.append(gateway)
    mem_at_start = gateway.memory_kb()
    print(
        f"gateway: {a.workers} worker(s); first call answered {start_s * 1000:.0f} ms after spawning"
        f" `fairmeter serve --workers {a.workers}`",
        flush=True,
    )
    pss_peak = mem_at_start["Pss"]

    proxies: list[tuple[str, int, Server]] = [("gateway", gw_port, gateway)]
    auths = {"gateway": key}  # the key each proxy is called with (the bare proxies take any)
    if a.with_nostore:  # its own database and key: it never writes a call, and must not see the gateway's
        nostore_config = tmp / "nostore.toml"
        write_config(nostore_config, tmp / "nostore.db", emu_port)
        auths["no-store"] = create_key(nostore_config)
        port = free_port()
        log = tmp / "no-store.log"
        nostore, _ = start_gateway(nostore_config, port, log, auths["no-store"], a.workers, nostore_cmd(), "no-store")
        servers.append(nostore)
        proxies.append(("no-store", port, nostore))
    # Each bare proxy: its name, and its options beyond the port, the upstream and the key.
    bare_proxies: list[tuple[str, list[str]]] = []
    if a.with_bare or a.compare_clients:
        bare_proxies.append(("bare", ["--client", "aiohttp"]))
    if a.compare_clients:
        bare_proxies.append(("bare-httpx", ["--client", "httpx"]))
    if a.with_floor:  # the floor on the gateway's own HTTP layers (the cheapest this stack has), beside the same
        bare_proxies.append(("bare-fm", ["--client", "fairmeter"]))  # proxy without it
        bare_proxies.append(("floor", ["--client", "fairmeter", "--ledger", str(tmp / "floor.db")]))
    for name, options in bare_proxies:
        port = free_port()
        argv = [sys.executable, str(BENCH / "bare_proxy.py"), "--port", str(port), *options]
        argv += ["--upstream", f"http://127.0.0.1:{emu_port}", "--api-key", UPSTREAM_KEY]
        bare = Server(name, argv, port, tmp / f"{name}.log")
        servers.append(bare)
        bare.wait_listening()
        proxies.append((name, port, bare))

    points: list[Point] = []
    sent_to_gateway, completed_by_gateway = 1, 1  # the start-up call
    rounds = f" in each of {a.rounds} rounds" if a.rounds > 1 else ""
    print(f"measuring: {a.warmup:g} s warm-up + {a.duration:g} s per point{rounds}", flush=True)
    # A round measures every point: direct, then each proxy. Every figure compares a proxy with the direct
    # run of its own round, minutes apart at most, so a VM that slows down between rounds moves both.
    for rnd, stream, c in itertools.product(range(a.rounds), (False, True), a.concurrency):
        point, _, _ = measure("direct", emu_port, None, UPSTREAM_KEY, c, stream, bodies, a, rnd)
        points.append(point)
        for name, port, proc in proxies:
            auth = auths.get(name, "bench")
            point, sent, completed = measure(name, port, proc, auth, c, stream, bodies, a, rnd)
            points.append(point)
            if name == "gateway":
                sent_to_gateway += sent
                completed_by_gateway += completed
                pss_peak = max(pss_peak, proc.memory_kb()["Pss"])
    mem = gateway.memory_kb()
    # One process: its peak resident set (VmHWM), exact. Several (a parent and its forked workers, sharing
    # the pages they have not written since the fork): the peak of their summed PSS, sampled after each
    # point; the sum of their VmHWM counts every shared page once per process and is printed as a bound.
    rss_mb = (mem["VmHWM"] if a.workers == 1 else pss_peak) / 1024
    print(
        f"gateway memory ({a.workers} worker(s)"
        + (")" if a.workers == 1 else " and their parent)")
        + f": peak RSS {rss_mb:.1f} MB"
        + ("" if a.workers == 1 else f" (sum of PSS; sum of each process's VmHWM {mem['VmHWM'] / 1024:.1f} MB)")
        + f"; RSS after start {mem_at_start['VmRSS'] / 1024:.1f} MB, now {mem['VmRSS'] / 1024:.1f} MB"
    )
    bare_mem = {name: proc.memory_kb()["VmHWM"] / 1024 for name, _, proc in proxies if name != "gateway"}
    for name, value in bare_mem.items():
        print(f"{name} memory: peak RSS (VmHWM) {value:.1f} MB")

    time.sleep(0.5)  # calls in flight when the last wrk run stopped are settling
    for s in servers:
        s.stop()
    rows = print_report(points, [name for name, _, _ in proxies])
    checks = targets_report(rows, rss_mb, start_s)
    beyond = beyond_bare_report(rows)
    floor = floor_report(rows)
    split = split_report(rows)
    ledger = ledger_check(config, db, sent_to_gateway, completed_by_gateway)
    v = ledger["verify"]
    assert isinstance(v, dict)
    print()
    print(
        f"ledger: fairmeter verify → balanced={v['balanced']} caps_ok={v['caps_ok']} pending_calls={v['pending_calls']}"
        f" problems={len(v['problems'])}"
    )
    print(
        f"ledger: calls recorded {ledger['calls_recorded']} {ledger['calls_by_status']};"
        f" requests sent by wrk (+1 start-up call) {ledger['requests_sent']},"
        f" of which completed within wrk's timer {ledger['requests_completed']}"
        f" (the rest were in flight when wrk stopped; the gateway settled them)"
    )
    print(f"ledger check: {'PASS' if ledger['ok'] else 'FAIL'}")
    if a.json:
        a.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "duration_s": a.duration,
                    "rounds": a.rounds,
                    "warmup_s": a.warmup,
                    "start_to_first_call_s": round(start_s, 4),
                    "gateway_workers": a.workers,
                    "gateway_peak_rss_mb": round(rss_mb, 1),
                    "bare_peak_rss_mb": {k: round(v2, 1) for k, v2 in bare_mem.items()},
                    "rows": rows,
                    "points": [asdict(pt) for pt in points],
                    "targets": checks,
                    "beyond_bare": beyond,
                    "floor": floor,
                    "split": split,
                    "ledger": ledger,
                    "loadavg_at_end": os.getloadavg()[0],
                },
                indent=2,
            )
        )
    return 0 if ledger["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
