"""Real `fairmeter serve` processes for tests: a config file, a free port, start, wait, stop or kill -9.

Each process writes its output to a log file of its own (shown when it fails to start), so a test
prints nothing.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import UPSTREAM_KEY

from fairmeter.testing import EmulatorServer

EXE = str(Path(sys.executable).parent / "fairmeter")
UPSTREAM_ENV = "FM_UP"
START_S = 30.0  # float-ok: seconds; several processes importing at once on a small machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, database_url: str, emulator: EmulatorServer, **settings: Any) -> Path:
    """A TOML config: the database, both upstreams at the emulator, and top-level ``settings`` (numbers)."""
    lines = [f'database_url = "{database_url}"']
    lines += [f"{name} = {value!r}" for name, value in settings.items()]
    lines += [
        f'[upstreams.openai]\nbase_url = "{emulator.openai_base_url}"\napi_key_env = "{UPSTREAM_ENV}"',
        f'[upstreams.anthropic]\nbase_url = "{emulator.origin}"\napi_key_env = "{UPSTREAM_ENV}"',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


class ServeProcess:
    """``fairmeter serve --config CONFIG --port PORT`` as an OS process of its own."""

    def __init__(self, config: Path, log: Path, *args: str) -> None:
        self.port = free_port()
        self.log = log
        env = {**os.environ, UPSTREAM_ENV: UPSTREAM_KEY}
        with log.open("w") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [EXE, "serve", "--config", str(config), "--port", str(self.port), *args],
                env=env, cwd=config.parent, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answers(self) -> bool:
        """True once ``/healthz`` answers 200 (uvicorn listens only after start-up, migrations included)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def wait_until_answering(self) -> None:
        deadline = time.monotonic() + START_S
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"fairmeter serve did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def kill_9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM (uvicorn's graceful shutdown) and wait; a process that does not stop is killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_all(config: Path, logs: Path, count: int) -> list[ServeProcess]:
    """``count`` processes on one config, started together; returns once every one answers."""
    procs: list[ServeProcess] = []
    try:
        for n in range(count):
            procs.append(ServeProcess(config, logs / f"serve{n}.log"))
        for p in procs:
            p.wait_until_answering()
    except BaseException:
        stop_all(procs)
        raise
    return procs


def stop_all(procs: list[ServeProcess]) -> list[int]:
    for p in procs:
        if p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
    return [p.stop() for p in procs]
