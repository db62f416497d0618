"""Process plumbing for the benchmark: spawn servers, read /proc, describe the machine, run wrk."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
WRK_SCRIPT = BENCH / "wrk_post.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fairmeter_cmd() -> list[str]:
    """The `fairmeter` console script of this interpreter's venv (``python -m fairmeter.cli`` if absent)."""
    script = Path(sys.executable).with_name("fairmeter")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fairmeter.cli"]


def nostore_cmd() -> list[str]:
    """`fairmeter` with the store's per-call work taken out (`bench/serve_without_store.py`), for its ``serve``."""
    return [sys.executable, str(BENCH / "serve_without_store.py")]


class Server:
    """A child process listening on a port; stopped (SIGTERM, then SIGKILL) by `stop()`."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = port
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            argv, stdout=self._log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_listening(self, timeout: float = 20.0) -> None:
        """Return once the port accepts connections; raise with the log if the process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.01)
        raise RuntimeError(f"{self.name} did not listen on port {self.port} within {timeout:g} s")

    def pids(self) -> list[int]:
        """The process and its descendants (``fairmeter serve --workers N``: the parent and its workers)."""
        out, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo.extend(int(c) for c in (task / "children").read_text().split())
        return out

    def cpu_ms(self) -> float:
        """User + system CPU time so far of the process and its descendants, in ms (from /proc/PID/stat)."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                # fields[0] is the state (field 3 of stat); utime and stime are fields 14 and 15.
                total += int(fields[11]) + int(fields[12])
        return total * 1000.0 / CLK_TCK

    def memory_kb(self) -> dict[str, int]:
        """In kB, summed over the process and its descendants: VmHWM (peak resident set), VmRSS, and Pss
        (the resident set with each page shared by n processes counted 1/n: what they use together)."""
        out = {"VmHWM": 0, "VmRSS": 0, "Pss": 0}
        for pid in self.pids():
            with contextlib.suppress(OSError):
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
                lines += Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
                for line in lines:
                    name, _, value = line.partition(":")
                    if name in out:
                        out[name] += int(value.split()[0])
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # uvicorn shuts down gracefully on SIGTERM
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


def cpu_ticks() -> tuple[int, int]:
    """The machine's CPU time so far, in ticks: (all of it, what the VM's host took: "steal"), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice, already inside user and nice]
    return sum(fields[:8]), fields[7] if len(fields) > 7 else 0


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the machine's CPU time between two `cpu_ticks` readings that the host took."""
    total = after[0] - before[0]
    return 100 * (after[1] - before[1]) / total if total > 0 else 0.0


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return {
        "nproc": int(nproc) if nproc.isdigit() else os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": (wrk.stdout or wrk.stderr).splitlines()[0].strip() if (wrk.stdout or wrk.stderr) else "?",
        "loadavg_at_start": os.getloadavg()[0],
    }


def ensure_wrk() -> str:
    """The path of wrk, installing the Debian package if it is missing."""
    return ensure_tool("wrk", "wrk")


def ensure_tool(command: str, package: str) -> str:
    """The path of ``command``, installing its Debian ``package`` if it is missing."""
    found = shutil.which(command)
    if found:
        return found
    print(f"{command} is not installed; running apt-get install -y {package}", flush=True)
    cmd = ["apt-get", "install", "-y", package]
    if os.geteuid() != 0 and shutil.which("sudo"):
        cmd = ["sudo", *cmd]
    if subprocess.run(cmd, check=False).returncode != 0:
        subprocess.run([*cmd[:-3], "update"], check=False)
        subprocess.run(cmd, check=True)
    found = shutil.which(command)
    if not found:
        raise RuntimeError(f"{command} could not be installed")
    return found


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run, from the JSON line the Lua ``done()`` hook prints (latencies in µs)."""

    requests: int  # responses completed
    issued: int  # requests sent, including those still in flight when the timer stopped
    duration_s: float
    p50_us: int
    p90_us: int
    p99_us: int
    mean_us: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s


def run_wrk(url: str, connections: int, seconds: float, body: Path, auth: str, chunks: int | None) -> WrkResult:
    """Load ``url`` with POSTs of ``body`` for ``seconds`` over ``connections`` kept-alive connections."""
    env = {**os.environ, "FMB_BODY_FILE": str(body), "FMB_AUTH": auth, "FMB_CHUNKS": str(chunks or "")}
    # One wrk thread: it keeps wrk's own CPU use low on a 2-core machine, and one thread drives
    # 64 connections at these rates without being the bottleneck.
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "20s", "-s", str(WRK_SCRIPT), url]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("FMB_RESULT "):
            d = json.loads(line[len("FMB_RESULT ") :])
            errors = sum(d[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
            return WrkResult(
                requests=d["requests"],
                issued=d["issued"],
                duration_s=d["duration_us"] / 1e6,
                p50_us=d["p50_us"],
                p90_us=d["p90_us"],
                p99_us=d["p99_us"],
                mean_us=d["mean_us"],
                errors=errors,
            )
    raise RuntimeError(f"wrk printed no result (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
