"""Building and serving the gateway: uvicorn with httptools and uvloop (chosen by measurement)."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import threading
import time
from types import TracebackType

import uvicorn

from fairmeter.catalog import Catalog
from fairmeter.clock import Clock, SystemClock
from fairmeter.config import Config
from fairmeter.gateway.app import Gateway
from fairmeter.gateway.http_protocol import GatewayHttpProtocol
from fairmeter.gateway.meter import Meter
from fairmeter.gateway.proxy import UpstreamCut
from fairmeter.gateway.state import GatewayState
from fairmeter.gateway.upstream import UpstreamClient
from fairmeter.gateway.workers import run_workers
from fairmeter.store import open_store, run_with


def build_gateway(config: Config, clock: Clock | None = None, catalog: Catalog | None = None) -> Gateway:
    """Open the store (migrating it) and wire the gateway's parts together."""
    clock = clock or SystemClock()
    store = open_store(config.database_url, clock.now())
    catalog = catalog or Catalog(config.prices, cache_dir=config.price_cache_dir)
    state = GatewayState(
        config=config,
        clock=clock,
        store=store,
        catalog=catalog,
        meter=Meter(config, catalog),
        upstream=UpstreamClient(config),
    )
    return Gateway(state)


class _QuietCuts(logging.Filter):
    """An upstream cut passed on to the client is expected, not a server error (its call record says so)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, UpstreamCut)


logging.getLogger("uvicorn.error").addFilter(_QuietCuts())


def uvicorn_config(app: Gateway, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=GatewayHttpProtocol,  # httptools, each response's head sent with its body (`http_protocol`)
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=75,
        proxy_headers=False,  # fairmeter does not use the client address; skip the middleware per request
        server_header=False,  # the provider's own Server and Date pass through (`upstream.response_headers`);
        date_header=False,  # fairmeter's own responses carry a Date (`asgi.send_whole`)
    )


# The cyclic garbage collector's first-generation threshold for a serving process (Python's default: 700
# allocations). A call allocates a few thousand objects, nearly all freed by reference counting, so the
# default runs a collection every few calls; 20,000 and the start-up objects frozen out of the scans
# (``gc.freeze``) saved about 3 % of the CPU per call under load (docs/performance.md).
GC_THRESHOLD = (20_000, 20, 20)


def _tune_gc() -> None:
    """For a serving process, once its long-lived objects exist (a worker also keeps its pages shared)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def serve(config: Config, host: str, port: int, workers: int = 1) -> int:
    """Serve until interrupted; returns the exit code. ``workers`` > 1: that many processes (`workers`)."""
    if workers <= 1:
        app = build_gateway(config)
        print(f"fairmeter gateway listening on http://{host}:{port} (database {config.database_url})", flush=True)
        _tune_gc()
        uvicorn.Server(uvicorn_config(app, host, port)).run()
        return 0
    # Loaded once, before the workers fork: they share its memory until they change it.
    catalog = Catalog(config.prices, cache_dir=config.price_cache_dir)

    def prepare() -> None:  # migrate once, so the workers do not race to
        run_with(open_store(config.database_url, time.time()), lambda store: store.pending_count())

    def serve_worker(sock: socket.socket) -> None:
        app = build_gateway(config, catalog=catalog)
        _tune_gc()
        uvicorn.Server(uvicorn_config(app, host, port)).run(sockets=[sock])

    print(f"fairmeter gateway: database {config.database_url}", flush=True)
    gc.freeze()  # what the workers inherit stays out of their collections, so its pages stay shared
    return run_workers(host, port, workers, prepare, serve_worker)


class GatewayServer:
    """The real gateway on a real port in a background thread (tests, demo, replay)."""

    def __init__(self, config: Config, clock: Clock | None = None, catalog: Catalog | None = None) -> None:
        self.app = build_gateway(config, clock, catalog)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn_config(self.app, "127.0.0.1", self.port))
        self.server.config.setup_event_loop = lambda: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._run, name="fairmeter-gateway", daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.origin + "/v1"

    @property
    def state(self) -> GatewayState:
        return self.app.state

    def _run(self) -> None:
        import uvloop

        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self.server.serve(sockets=[self.sock]))
        loop.close()

    def __enter__(self) -> GatewayServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.005)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self.sock.close()
