"""A small HTTP/1.1 client for the upstream calls: kept-alive connections on raw asyncio with httptools.

Why not aiohttp (the client before it): in the overhead benchmark, aiohttp's request and response objects
took about a fifth of the gateway's CPU per call (docs/performance.md); the gateway needs only a fraction of
what aiohttp does: one request on a kept-alive connection, its status and headers, and its body chunk by chunk
as it arrives (chunked transfer decoded), with backpressure and a read timeout.

What it does, and does not:

* ``http`` and ``https`` origins (TLS with the system's trust store and hostname check); no proxies, no
  redirects (a 3xx is a response like any other), no cookies, no decompression (the gateway asks for
  ``identity``).
* A connection is reused only after its response was read to the end and both sides allow keep-alive;
  anything else (an error, a response abandoned half-way, ``close()``) closes it.
* Timeouts: ``connect_timeout`` to open a connection; ``read_timeout`` for each wait on the server (the
  headers, then every body chunk): ``TimeoutError``. A connection that could not be opened raises
  :class:`ConnectFailed`; a connection that broke or a response the parser rejects raises :class:`UpstreamError`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import field
from typing import cast
from urllib.parse import urlsplit

import httptools

from fairmeter.record import record

# Stop reading from the socket while this much body is buffered and not yet taken; resume once it is taken.
HIGH_WATER = 256 * 1024
IDLE_S = 30.0  # float-ok: seconds; a kept-alive connection idle longer than this is closed, not reused
MAX_IDLE_PER_ORIGIN = 512


class UpstreamError(Exception):
    """The upstream connection broke, or its response was not valid HTTP/1.1."""


class ConnectFailed(UpstreamError):
    """No connection could be opened: nothing was sent, so the request may be retried."""


@record
class Origin:
    scheme: str
    host: str
    port: int
    # The Host header's value, made once: its IDNA encoding costs microseconds, and every request sends it.
    host_header: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        value = host if self.port == default else f"{host}:{self.port}"
        object.__setattr__(self, "host_header", value.encode("idna"))

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


def split_url(url: str) -> tuple[Origin, str]:
    """``https://api.example.com/v1/x?y`` → (origin, ``/v1/x?y``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Origin(parts.scheme, parts.hostname, port), path


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the response being read on it."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0  # float-ok: monotonic seconds
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reset_response()

    def _reset_response(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.framed = False  # Content-Length or chunked: the body's end is known without the connection closing
        self.keep_alive = False

    # ---- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"the upstream sent a response that is not valid HTTP/1.1: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.complete and not self.framed and self._error is None:
            self.complete = True  # a body delimited by the connection's end (no length, not chunked)
            self._wake()
            return
        if not self.complete:
            why = f": {type(exc).__name__}: {exc}" if exc else ""
            self._fail(UpstreamError("the upstream closed the connection before the response ended" + why))

    # ---- httptools callbacks ----------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        for name, value in self.headers:
            lname = name.lower()
            if lname == b"content-length" or (lname == b"transfer-encoding" and b"chunked" in value.lower()):
                self.framed = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # asked now: the parser forgets it once reset
        self._wake()

    # ---- waiting -----------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self.close()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def wait(self, timeout: float) -> None:  # float-ok: seconds
        """Until the parser has something new (or the connection failed); ``TimeoutError`` after ``timeout``."""
        if self._error is not None:
            raise self._error
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _time_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def take(self) -> bytes | None:
        """Everything buffered, as one piece (what arrived together is relayed together), or None."""
        chunks = self.chunks
        if not chunks:
            return None
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def open(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def reuse(self) -> None:
        """Ready for the next request on this kept-alive connection."""
        self._reset_response()
        self.parser = httptools.HttpResponseParser(self)

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and self.open and self._error is None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Response:
    """An upstream response whose status and headers have arrived; the body is read with :meth:`chunks`."""

    __slots__ = ("_client", "_conn", "_read_timeout", "_released", "raw_headers", "status")

    def __init__(self, client: HttpClient, conn: _Connection, status: int, read_timeout: float) -> None:  # float-ok
        self._client = client
        self._conn = conn
        self._read_timeout = read_timeout
        self.status = status
        self.raw_headers = conn.headers
        self._released = False

    @property
    def content_type(self) -> str:
        """The media type, lower-cased, without parameters ("" when there is none)."""
        for name, value in self.raw_headers:
            if name.lower() == b"content-type":
                return value.split(b";", 1)[0].strip().lower().decode("latin-1")
        return ""

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (chunked transfer decoded; what arrived since the last piece comes as one);
        raises UpstreamError or TimeoutError on failure."""
        conn = self._conn
        while True:
            chunk = conn.take()
            if chunk is not None:
                yield chunk
                continue
            if conn.complete:
                return
            if conn.closed and conn.error is None:
                raise UpstreamError("the response was closed before its end")
            await conn.wait(self._read_timeout)

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def release(self) -> None:
        """Done with the response: a connection whose response was read to the end goes back to the pool."""
        if self._released:
            return
        self._released = True
        if self._conn.reusable():
            self._client._give_back(self._conn)
        else:
            self._conn.close()

    def close(self) -> None:
        """Abandon the response now: the connection is closed (the upstream sees the request end)."""
        self._released = True
        self._conn.close()


class HttpClient:
    """Kept-alive connections per origin; one request at a time on each."""

    def __init__(
        self, connect_timeout: float, read_timeout: float, tls: ssl.SSLContext | None = None
    ) -> None:  # float-ok: seconds
        """``tls``: the context for ``https`` origins (default: the system's trust store, hostnames checked)."""
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: dict[Origin, list[_Connection]] = {}
        self._ssl = tls
        self._closed = False

    async def request(
        self,
        method: str,
        origin: Origin,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
        on_sent: Callable[[], None] | None = None,
    ) -> Response:
        """Send the request and wait for the response's status and headers; ``on_sent`` is called once the
        request is written to the connection (never when nothing was sent)."""
        if self._closed:
            raise UpstreamError("the upstream client is closed")
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
                # Nothing is sent (a configured upstream key with a line break in it, say): the call fails
                # as one that never reached the upstream, and costs nothing.
                raise UpstreamError(f"the header {name!r} has a line break or colon; nothing was sent")
        conn = await self._connection(origin)
        head = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), b"host: ", origin.host_header, b"\r\n"]
        for name, value in headers.items():
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head.append(b"content-length: %d\r\n" % len(body or b""))
        head.append(b"\r\n")
        if body:
            head.append(body)
        assert conn.transport is not None
        conn.transport.write(b"".join(head))
        if on_sent is not None:
            on_sent()
        try:
            while not conn.headers_done:
                await conn.wait(self.read_timeout)
        except BaseException:
            conn.close()
            raise
        return Response(self, conn, conn.parser.get_status_code(), self.read_timeout)

    async def _connection(self, origin: Origin) -> _Connection:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < IDLE_S and conn.open:
                conn.reuse()
                return conn
            conn.close()
        return await self._open(origin)

    async def _open(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(origin),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context else None,
                )
        except TimeoutError:
            why = f"connecting to {origin.host}:{origin.port} took over {self.connect_timeout:g} s"
            raise ConnectFailed(why) from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {origin.host}:{origin.port}: {exc}") from exc
        return conn

    def _give_back(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) >= MAX_IDLE_PER_ORIGIN or self._closed:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
