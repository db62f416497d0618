"""Instructions per request: a measure of the gateway's cost that the machine's noise does not move.

On a shared virtual machine the same timed run moves by 20 % within the hour, which hides any change of a
few percent. This counts the CPU instructions a serving process executes per request instead, under
valgrind's callgrind (user space only: the kernel's share, mostly the sockets, is not counted). The same
workload as `bench/overhead.py`: a chat completion with a 1 KB prompt and ``max_tokens`` 500, sent one
after another on one kept-alive connection to the gateway on SQLite (one process), to the bare proxy, to the bare
proxy on the gateway's own HTTP layers (``--client fairmeter``), and to the floor of a metering proxy (that one
with ``--ledger``: a hold committed before each call is forwarded).

Each target is started twice under callgrind and sent ``--first`` and then ``--second`` requests; the
difference of the two totals over the difference of the counts leaves out start-up and shut-down. A run takes
about a minute (callgrind runs the code some fifty times slower). Runs of the same code differ by up to 4 % (the
WAL checkpoint thread works on a wall-clock timer), so a small change needs several runs to show.
At that speed the rides' 5 ms timer (the forwarded marks and settlements commit together 5 ms after the first)
covers fewer calls than at full speed, where it covers some five at concurrency 1: this count overstates a
call's share of the rides' commit.

    .venv/bin/python bench/instructions.py                  # gateway, bare proxy (aiohttp, own client), floor
    .venv/bin/python bench/instructions.py --json out.json
    .venv/bin/python bench/instructions.py --without-store  # also the gateway without the store's per-call work
    .venv/bin/python bench/instructions.py --stream --only gateway   # streamed calls (20 chunks), one target

Nothing asserts a count. valgrind is installed from Debian's package if it is missing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from overhead import PATH, STREAM_CHUNKS, UPSTREAM_KEY, create_key, request_body, write_config
from procs import BENCH, Server, ensure_tool, fairmeter_cmd, free_port, nostore_cmd

_COLLECTED = re.compile(r"Collected : (\d+)")


def send_requests(port: int, auth: str, count: int, stream: bool, timeout_s: float = 180.0) -> None:
    """Wait until the server answers a call, then send ``count`` more on the same connection (``stream``: streamed
    calls of ``STREAM_CHUNKS`` chunks, as `bench/overhead.py` sends them)."""
    body = request_body(stream)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + auth}
    if stream:
        headers["x-emulator-chunks"] = str(STREAM_CHUNKS)
    deadline = time.monotonic() + timeout_s
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", PATH, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            break
        except OSError:
            conn.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answered on port {port} within {timeout_s:g} s") from None
            time.sleep(0.2)
    if resp.status != 200:
        raise RuntimeError(f"the first call was answered with {resp.status}")
    for _ in range(count):
        conn.request("POST", PATH, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"a call was answered with {resp.status}")
    conn.close()


def instructions(
    argv: list[str], port: int, auth: str, count: int, log: Path, env: dict[str, str], stream: bool = False
) -> int:
    """Instructions executed by ``argv`` (and its threads) from start to exit, serving ``count`` + 1 calls."""
    valgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    with log.open("w") as err:
        proc = subprocess.Popen([*valgrind, *argv], env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            send_requests(port, auth, count, stream)
            time.sleep(1.0)  # settlements riding after the last response
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=300)
    totals = [int(m) for m in _COLLECTED.findall(log.read_text())]
    if not totals:
        raise RuntimeError(f"no instruction count in {log}:\n{log.read_text()[-2000:]}")
    return sum(totals)


Launch = Callable[[int, int], tuple[list[str], str, dict[str, str]]]  # (port, run) → argv, key, environment


def per_request(launch: Launch, name: str, first: int, second: int, tmp: Path, stream: bool = False) -> float:
    """Instructions per request of one target: two runs, the difference over the difference of their counts."""
    counts = []
    for n in (first, second):
        port = free_port()
        argv, auth, env = launch(port, n)
        counts.append(instructions(argv, port, auth, n, tmp / f"{name}-{n}.log", env, stream))
    return (counts[1] - counts[0]) / (second - first)


def main() -> int:
    p = argparse.ArgumentParser(description="instructions per request: gateway, bare proxy, floor (callgrind)")
    p.add_argument("--first", type=int, default=100, help="requests in the first run (default 100)")
    p.add_argument("--second", type=int, default=400, help="requests in the second run (default 400)")
    p.add_argument("--json", type=Path, help="write the figures to this file")
    p.add_argument(
        "--without-store", action="store_true", help="also the gateway with its store's per-call work stubbed out"
    )
    p.add_argument(
        "--stream", action="store_true", help=f"streamed calls ({STREAM_CHUNKS} chunks) instead of plain ones"
    )
    p.add_argument(
        "--only", nargs="+", metavar="NAME", help="only these targets (gateway, no-store, bare, bare-fm, floor)"
    )
    a = p.parse_args()
    ensure_tool("valgrind", "valgrind")
    tmp = Path(tempfile.mkdtemp(prefix="fairmeter-instructions-"))
    emu_port = free_port()
    emulator = Server(
        "emulator", [*fairmeter_cmd(), "emulator", "--port", str(emu_port)], emu_port, tmp / "emulator.log"
    )
    try:
        emulator.wait_listening()

        def gateway(
            port: int, n: int, name: str = "gateway", cmd: list[str] | None = None
        ) -> tuple[list[str], str, dict[str, str]]:
            config = tmp / f"{name}-{n}.toml"
            write_config(config, tmp / f"{name}-{n}.db", emu_port)
            argv = [*(cmd or fairmeter_cmd()), "serve", "--config", str(config), "--port", str(port)]
            return argv, create_key(config), {**os.environ, "BENCH_UPSTREAM_KEY": UPSTREAM_KEY}

        def bare(port: int, n: int) -> tuple[list[str], str, dict[str, str]]:
            argv = [sys.executable, str(BENCH / "bare_proxy.py"), "--port", str(port)]
            argv += ["--upstream", f"http://127.0.0.1:{emu_port}", "--api-key", UPSTREAM_KEY]
            return argv, "bench", dict(os.environ)

        def bare_fm(port: int, n: int) -> tuple[list[str], str, dict[str, str]]:
            argv, auth, env = bare(port, n)
            return [*argv, "--client", "fairmeter"], auth, env

        def floor(port: int, n: int) -> tuple[list[str], str, dict[str, str]]:
            argv, auth, env = bare_fm(port, n)
            return [*argv, "--ledger", str(tmp / f"floor-{n}.db")], auth, env

        def without_store(port: int, n: int) -> tuple[list[str], str, dict[str, str]]:
            return gateway(port, n, "no-store", nostore_cmd())

        figures = {}
        targets = [("gateway", gateway), ("bare", bare), ("bare-fm", bare_fm), ("floor", floor)]
        if a.without_store:
            targets.insert(1, ("no-store", without_store))
        for name, launch in targets:
            if a.only and name not in a.only:
                continue
            figures[name] = per_request(launch, name, a.first, a.second, tmp, a.stream)
            print(f"{name:<8} {figures[name]:>12,.0f} instructions per request", flush=True)
        if {"gateway", "bare", "floor"} <= figures.keys():
            gw = figures["gateway"]
            print(f"gateway / bare: {gw / figures['bare']:.2f}; gateway / floor: {gw / figures['floor']:.2f}")
        if a.json:
            a.json.write_text(json.dumps(figures, indent=2))
        return 0
    finally:
        emulator.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
