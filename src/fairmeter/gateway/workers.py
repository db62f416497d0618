"""``fairmeter serve --workers N``: N gateway processes on one port and one database.

One Python process serves from one core. With N > 1 the parent opens the database once (applying any
missing migration), then forks N workers. Each worker opens its own store and binds its own listening
socket with ``SO_REUSEPORT``, so the kernel spreads new connections evenly over them; the parent only
holds the port (bound, never listening, so it receives no connections) and supervises:

- SIGTERM or SIGINT to the parent stops every worker gracefully (each finishes and settles its calls);
- a worker that dies is started again, unless it exited by itself within ``MIN_UPTIME_S`` of its start
  (it cannot start: the database is unreachable, say), in which case the parent stops the others and
  exits 1;
- a worker whose parent dies stops by itself (it watches a pipe whose write end only the parent holds).

Each worker is a lease owner of its own, as replicas are (docs/architecture.md): if one is killed, the
others resolve its lapsed holds. Every cap stays exact because every hold is checked inside one database
transaction; on SQLite the workers take turns at the write lock without blocking their event loops
(`fairmeter.store.batch`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("fairmeter.gateway")

MIN_UPTIME_S = 1.0  # float-ok: seconds; a worker that dies sooner is taken as unable to start
STOP_TIMEOUT_S = 30.0  # float-ok: seconds; then the remaining workers are killed


def listener(host: str, port: int, reuse_port: bool, listen: bool = True) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``SO_REUSEPORT`` when asked), listening unless ``listen=False``."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    if listen:
        sock.listen(2048)
    return sock


def run_workers(
    host: str, port: int, workers: int, prepare: Callable[[], None], serve: Callable[[socket.socket], None]
) -> int:
    """Fork ``workers`` processes that each run ``serve(listening socket)``; supervise them; return an exit code.

    ``prepare`` runs once in the parent before the first fork (it migrates the database).
    """
    if not hasattr(socket, "SO_REUSEPORT") or not hasattr(os, "fork"):
        raise SystemExit("--workers above 1 needs SO_REUSEPORT and fork (Linux or another Unix)")
    try:
        holder = listener(host, port, reuse_port=True, listen=False)  # resolves port 0 and keeps the port ours
    except OSError as exc:
        print(f"fairmeter gateway: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    port = holder.getsockname()[1]
    prepare()
    alive_r, alive_w = os.pipe()  # workers see EOF on alive_r when the parent is gone
    children: dict[int, float] = {}  # pid → started at (monotonic)
    stopping = False
    code = 0

    def start() -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(alive_w)
            holder.close()
            _worker(alive_r, lambda: serve(listener(host, port, reuse_port=True)))
        children[pid] = time.monotonic()

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            for pid in list(children):
                _signal(pid, signal.SIGTERM)

    for _ in range(workers):
        start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"fairmeter gateway: {workers} workers on http://{host}:{port}", flush=True)
    deadline: float | None = None
    while children:
        if stopping and deadline is None:
            deadline = time.monotonic() + STOP_TIMEOUT_S
        try:
            pid, status = os.waitpid(-1, os.WNOHANG if deadline else 0)
        except ChildProcessError:
            break
        if pid == 0:  # stopping: poll until every worker is gone, then kill what remains
            if deadline is not None and time.monotonic() > deadline:
                for child in list(children):
                    _signal(child, signal.SIGKILL)
                deadline = time.monotonic() + STOP_TIMEOUT_S
            time.sleep(0.05)
            continue
        started = children.pop(pid, None)
        if started is None or stopping:
            continue
        why = _exit_reason(status)
        if not os.WIFSIGNALED(status) and time.monotonic() - started < MIN_UPTIME_S:
            log.error("worker %d %s within %.1f s of its start; stopping the gateway", pid, why, MIN_UPTIME_S)
            print(f"fairmeter gateway: worker {pid} {why} at start; stopping", file=sys.stderr, flush=True)
            code = 1
            stop(signal.SIGTERM, None)
            continue
        print(f"fairmeter gateway: worker {pid} {why}; starting another", file=sys.stderr, flush=True)
        start()
    os.close(alive_w)
    os.close(alive_r)
    holder.close()
    return code


def _worker(alive_r: int, serve: Callable[[], None]) -> None:
    """Run in a forked worker: serve until stopped, and stop when the parent goes away. Never returns."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)

    def watch_parent() -> None:
        os.read(alive_r, 1)  # returns (EOF) when the parent has exited, however it ended
        os.kill(os.getpid(), signal.SIGTERM)  # a graceful stop: calls in flight are settled

    threading.Thread(target=watch_parent, name="fairmeter-parent-watch", daemon=True).start()
    code = 0
    try:
        serve()
    except BaseException:
        log.exception("worker failed")
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _exit_reason(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
