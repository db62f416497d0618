"""Running the emulator: `serve()` in the foreground, `EmulatorServer` in a background thread for tests."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import uvloop

from fairmeter.testing.app import Emulator
from fairmeter.testing.wire import HttpConnection

T = TypeVar("T")
_BACKLOG = 2048  # wrk opens hundreds of connections at once


async def _listen(emulator: Emulator, host: str, port: int, connections: set[HttpConnection]) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: HttpConnection(emulator.handle, connections), host, port, backlog=_BACKLOG)


def serve(host: str = "127.0.0.1", port: int = 8900) -> None:
    """Run the emulator in the foreground until interrupted; prints one line once it listens."""

    async def main() -> None:
        server = await _listen(Emulator(), host, port, set())
        bound = server.sockets[0].getsockname()[1]
        print(f"fairmeter emulator listening on http://{host}:{bound}", flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main())


class EmulatorServer:
    """The emulator on 127.0.0.1 and a free port, in a background thread; use as a context manager.

    `origin` is the Anthropic SDK's base_url, `openai_base_url` the OpenAI SDK's.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._requested_port = port
        self.port = 0
        self._emulator = Emulator()
        self._connections: set[HttpConnection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def origin(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """`origin + "/v1"`."""
        return f"{self.origin}/v1"

    def start(self) -> EmulatorServer:
        """Start listening; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("this EmulatorServer is already started")
        self._thread = threading.Thread(target=self._run, name="fairmeter-emulator", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise RuntimeError(f"the emulator could not start: {self._failure}") from self._failure
        return self

    def stop(self) -> None:
        """Close every connection and stop the thread."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """The same JSON as `GET /_emulator/stats`."""
        return self._call(self._emulator.stats.snapshot)

    def reset(self) -> None:
        """Clear stats and scenarios."""
        self._call(self._emulator.reset)

    def add_scenario(self, case: Any) -> list[str]:
        """Register a recorded response (a cost case, a list of them, or a whole cost-case file); returns ids.

        Raises `fairmeter.testing.scenarios.ScenarioError` when the case is malformed.
        """
        return self._call(lambda: self._emulator.add_scenarios(case))

    def _call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the emulator's loop thread (its state is never touched from two threads)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the EmulatorServer is not started")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(timeout=5)

    def _run(self) -> None:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            server = loop.run_until_complete(
                _listen(self._emulator, self.host, self._requested_port, self._connections)
            )
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            loop.close()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for connection in list(self._connections):
                connection.close()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(server.wait_closed())
            loop.close()
