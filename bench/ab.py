"""Two or more builds of the gateway at one concurrency, alternating: an A/B on a noisy VM.

    .venv/bin/python bench/ab.py SRC_A SRC_B [--pairs 6] [--c 1] [--seconds 3] [--pin]

Each SRC is a ``src`` folder (``git worktree add /tmp/base HEAD`` gives the committed build at
``/tmp/base/src``), optionally with ``@N`` for N worker processes (default one: ``src@1 src@2`` compares one
worker with two); the gateway runs with ``PYTHONPATH=SRC``, a fresh SQLite file and key per run, against one
emulator. Each pair first measures the direct call to the emulator, then runs A, B …, so a VM that slows down
moves them all; each run prints p50, p90, p99 (µs, wrk's histogram), what it adds to the direct call's p50 and
its share of the direct call's requests/s (both against its own pair's direct run), and the gateway's CPU per
request (ms); the medians close the run. ``--pin`` puts the gateway on CPU 1 and wrk and the emulator on
CPU 0. One run of a build can land 50 % away from the next at c=1 here, as the VM's host moves through its
phases (docs/performance.md, stop 12): compare the medians of several pairs, never one run.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import overhead as ov
from procs import Server, fairmeter_cmd, free_port, run_wrk


def pin(server: Server, cpu: int) -> None:
    """Every thread of ``server``'s processes on ``cpu``."""
    for pid in server.pids():
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), {cpu})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("srcs", nargs="+", help="src folders of the builds to compare")
    ap.add_argument("--pairs", type=int, default=6, help="runs of each build (default 6)")
    ap.add_argument("--c", type=int, default=1, help="wrk connections (default 1)")
    ap.add_argument("--seconds", type=float, default=3, help="measured seconds per run, after 2 s of warm-up")
    ap.add_argument("--pin", action="store_true", help="gateway on CPU 1, wrk and the emulator on CPU 0")
    a = ap.parse_args()
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # one line per run, as it ends
    if a.pin:
        os.sched_setaffinity(0, {0})  # wrk and the emulator inherit it
    tmp = Path(tempfile.mkdtemp(prefix="fairmeter-ab-"))
    body = tmp / "plain.json"
    body.write_bytes(ov.request_body(False))
    emu_port = free_port()
    emulator = Server("emulator", [*fairmeter_cmd(), "emulator", "--port", str(emu_port)], emu_port, tmp / "emu.log")
    emulator.wait_listening()
    runs: dict[str, list[tuple[float, ...]]] = {src: [] for src in a.srcs}
    direct_url = f"http://127.0.0.1:{emu_port}{ov.PATH}"
    try:
        for i in range(a.pairs):
            run_wrk(direct_url, a.c, 2, body, ov.UPSTREAM_KEY, None)
            d = run_wrk(direct_url, a.c, a.seconds, body, ov.UPSTREAM_KEY, None)
            print(f"{'direct':<32} p50 {d.p50_us:6d}  p90 {d.p90_us:6d}  p99 {d.p99_us:6d}  {d.rps:.0f} rps")
            for n, src in enumerate(a.srcs):
                run = tmp / f"{i}-{n}"
                run.mkdir()
                config = run / "fairmeter.toml"
                ov.write_config(config, run / "fm.db", emu_port)
                folder, _, workers = src.partition("@")
                os.environ["PYTHONPATH"] = folder
                key = ov.create_key(config)
                port = free_port()
                gateway, _ = ov.start_gateway(config, port, run / "gateway.log", key, int(workers or 1))
                try:
                    if a.pin:
                        pin(gateway, 1)
                    url = f"http://127.0.0.1:{port}{ov.PATH}"
                    run_wrk(url, a.c, 2, body, key, None)
                    time.sleep(0.3)
                    before = gateway.cpu_ms()
                    r = run_wrk(url, a.c, a.seconds, body, key, None)
                    cpu = (gateway.cpu_ms() - before) / max(r.requests, 1)
                finally:
                    gateway.stop()
                added, share = r.p50_us - d.p50_us, 100 * r.rps / d.rps
                runs[src].append((r.p50_us, r.p90_us, r.p99_us, added, share, cpu))
                print(f"{src:<32} p50 {r.p50_us:6d}  p90 {r.p90_us:6d}  p99 {r.p99_us:6d}  +p50 {added:6d}"
                      f"  {share:5.1f} % of direct  cpu {cpu:.3f}")  # fmt: skip
    finally:
        emulator.stop()
    print("medians:")
    for src, rows in runs.items():
        p50, p90, p99, added, share, cpu = (statistics.median(col) for col in zip(*rows, strict=True))
        print(f"{src:<32} p50 {p50:6.0f}  p90 {p90:6.0f}  p99 {p99:6.0f}  +p50 {added:6.0f}"
              f"  {share:5.1f} % of direct  cpu {cpu:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
