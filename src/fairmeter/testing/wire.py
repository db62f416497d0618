"""A minimal HTTP/1.1 server on raw asyncio + httptools: keep-alive, chunked SSE, and abrupt failures.

Why not an ASGI server or aiohttp: the emulator is the "direct" baseline in benchmarks (a quick wrk run
measured ~55k req/s for this design against ~11k for aiohttp.web on the same machine), and it must be able to
reset a connection before any response and cut a chunked body half-way, which an ASGI app cannot do.

The handler is synchronous and returns a `Reply`; everything that takes time (latency, chunk delays) or ends
abruptly (cut, reset) is carried out here, per connection, in one task. Requests pipelined behind a running
reply wait their turn.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

import httptools

from fairmeter.testing.stats import TagStats


@dataclass(slots=True)
class Request:
    """One parsed request; header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


@dataclass(slots=True)
class Reply:
    """What to send back, and how.

    `events` (already SSE-framed) makes a chunked stream; otherwise `body` is sent with a content-length.
    `cut_after` sends that many events (for a plain body: half of it) and then closes the connection without
    finishing the body; `reset` aborts the connection with an RST before anything is sent.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    events: list[bytes] | None = None
    cut_after: int | None = None
    reset: bool = False
    latency_s: float = 0.0  # float-ok: seconds
    chunk_delay_s: float = 0.0  # float-ok: seconds
    tally: TagStats | None = field(default=None)

    @property
    def immediate(self) -> bool:
        """Whether the whole reply can be written at once, without a task."""
        return not (self.latency_s or self.chunk_delay_s or self.reset or self.cut_after is not None)


Handler = Callable[[Request], Reply]

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_REASONS[529] = "Site Overloaded"
_log = logging.getLogger(__name__)
_LINGER_RESET = struct.pack("ii", 1, 0)


class _DateHeader:
    """The `date` header value, formatted at most once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def value(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True)
        return self._value


_DATE = _DateHeader()


def _head(reply: Reply, length: int | None, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}\r\ndate: {_DATE.value()}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in reply.headers)
    lines.append("transfer-encoding: chunked\r\n" if length is None else f"content-length: {length}\r\n")
    if not keep_alive:
        lines.append("connection: close\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_LAST_CHUNK = b"0\r\n\r\n"


class HttpConnection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, handler: Handler, connections: set[HttpConnection]) -> None:
        self._handler = handler
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._broken = False
        self._writable: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._transport = cast(asyncio.Transport, transport)
        self._connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            # Requests parsed before the bad bytes (e.g. data after `connection: close`) are still answered.
            self._broken = True
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._connections.discard(self)
        # Cancelling the running reply is how a client that went away is noticed between chunks.
        if self._task is not None:
            self._task.cancel()
        if self._writable is not None and not self._writable.done():
            self._writable.cancel()

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        url = self._url
        # parse_url is only needed for a query string or an absolute URL; most requests have neither
        path = (httptools.parse_url(url).path if b"?" in url or not url.startswith(b"/") else url).decode("latin-1")
        request = Request(
            method=self._parser.get_method().decode("latin-1"),
            path=path,
            headers=self._headers,
            body=b"".join(self._body),
            keep_alive=self._parser.should_keep_alive(),
        )
        self._queue.append(request)
        self._next()

    # -- replying --------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close at once (server shutdown)."""
        if not self._closed:
            self._end(abort=True)

    def _next(self) -> None:
        """Answer queued requests in order; one that takes time holds back those pipelined behind it."""
        while self._queue and self._task is None and not self._closed:
            self._dispatch(self._queue.popleft())
        if self._broken and self._task is None and not self._queue:
            self._send_bad_request()

    def _dispatch(self, request: Request) -> None:
        try:
            reply = self._handler(request)
        except Exception:
            # A bug in the emulator must fail the one request loudly, not hang the connection.
            _log.exception("emulator handler failed on %s %s", request.method, request.path)
            body = b'{"error": {"message": "emulator internal error", "type": "server_error"}}'
            reply = Reply(500, [("content-type", "application/json")], body)
        if reply.immediate:
            self._write_whole(reply, request.keep_alive)
            return
        self._task = asyncio.get_running_loop().create_task(self._run(reply, request.keep_alive))

    def _write_whole(self, reply: Reply, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or self._closed:
            return
        if reply.events is None:
            transport.write(_head(reply, len(reply.body), keep_alive) + reply.body)
        else:
            frames = [_head(reply, None, keep_alive), *map(_chunk, reply.events), _LAST_CHUNK]
            transport.write(b"".join(frames))
            if reply.tally is not None:
                reply.tally.chunks_sent += len(reply.events)
        self._complete(reply, keep_alive)

    async def _run(self, reply: Reply, keep_alive: bool) -> None:
        try:
            if reply.latency_s:
                await asyncio.sleep(reply.latency_s)
            if reply.reset:
                self._reset()
            elif reply.cut_after is not None:
                await self._cut(reply)
            elif reply.events is not None and reply.chunk_delay_s:
                await self._stream(reply, reply.events, keep_alive, finish=True)
                self._complete(reply, keep_alive)
            else:
                self._write_whole(reply, keep_alive)
        except asyncio.CancelledError:
            if reply.tally is not None:
                reply.tally.client_disconnected += 1
            return
        self._task = None
        self._next()

    async def _stream(self, reply: Reply, events: list[bytes], keep_alive: bool, finish: bool) -> None:
        """Send the head and `events`, pausing `chunk_delay_s` between events and noticing a gone client.

        `finish` ends the chunked body properly; without it the body is left open (for a cut).
        """
        transport = self._transport
        assert transport is not None
        transport.write(_head(reply, None, keep_alive))
        for i, event in enumerate(events):
            if i and reply.chunk_delay_s:
                await asyncio.sleep(reply.chunk_delay_s)
            if self._closed:
                raise asyncio.CancelledError
            transport.write(_chunk(event))
            if reply.tally is not None:
                reply.tally.chunks_sent += 1
            if self._writable is not None:
                await self._writable
        if finish:
            transport.write(_LAST_CHUNK)

    def _complete(self, reply: Reply, keep_alive: bool) -> None:
        if reply.tally is not None:
            reply.tally.completed += 1
        if not keep_alive:
            self._end()

    def _end(self, abort: bool = False) -> None:
        """Stop answering on this connection: close (flushing what was written first) or abort."""
        self._closed = True  # requests pipelined behind this one are dropped, as a closing server does
        transport = self._transport
        if transport is not None:
            if abort:
                transport.abort()
            else:
                transport.close()

    async def _cut(self, reply: Reply) -> None:
        """Send part of the reply, then close without finishing the body (the client sees an incomplete read)."""
        transport = self._transport
        assert transport is not None
        if reply.events is None:
            transport.write(_head(reply, len(reply.body), False) + reply.body[: len(reply.body) // 2])
        else:
            await self._stream(reply, reply.events[: reply.cut_after], False, finish=False)
        # close() flushes what was written, then sends FIN: the data arrives, the terminating chunk never does.
        self._end()

    def _reset(self) -> None:
        """Abort the connection with an RST (SO_LINGER 0) before any byte of a response."""
        transport = self._transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self._end(abort=True)

    def _send_bad_request(self) -> None:
        transport = self._transport
        if transport is not None and not self._closed:
            body = b'{"error": {"message": "malformed HTTP request", "type": "invalid_request_error"}}'
            reply = Reply(400, [("content-type", "application/json")], body)
            transport.write(_head(reply, len(body), False) + body)
            self._end()
