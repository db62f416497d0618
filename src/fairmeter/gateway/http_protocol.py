"""uvicorn's HTTP protocol (httptools), with each response's head sent together with its first body bytes.

uvicorn writes a response's status line and headers as soon as the app sends ``http.response.start``, and its
body with the next message; uvloop sends every write at once. So every response left in two system calls and
two TCP segments, and the client had to wake for each. Here the connection's transport holds a head until the
next write (the body, normally in the same turn of the event loop) and sends both in one; a head that no write
follows in that turn (a stream whose first chunk is still on its way) goes out alone at the loop's next turn,
so the client never waits for it longer than one turn. Nothing is reordered or dropped: a held head goes out
with the next write that is not a head, or before the connection closes. (Body bytes that happen to start like
a head are held the same way: at most one turn later, still in order.) Measured in docs/performance.md (stop 11).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD = b"HTTP/"  # every head uvicorn writes starts so (the status line, or ``100 Continue``)


class HeadWithBody:
    """The transport as the protocol sees it: a head waits for the write that follows it (see above).

    The protocol uses only the methods below; anything else reaches the real transport unchanged.
    """

    __slots__ = ("_head", "_loop", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if data.startswith(_HEAD):  # held for what follows it (after a head still held: ``100 Continue``)
            if head is None:
                self._loop.call_soon(self.release)
            self._head = data if head is None else head + data
        elif head is not None:  # its body: one write for both
            self._head = None
            self.transport.write(head + data)
        else:
            self.transport.write(data)

    def release(self) -> None:
        """Send a head still held (nothing followed it in its turn of the loop)."""
        head = self._head
        if head is not None:
            self._head = None
            if not self.transport.is_closing():
                self.transport.write(head)

    def close(self) -> None:
        self.release()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over `HeadWithBody` (given to uvicorn as its ``http`` class)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadWithBody(transport, self.loop))  # type: ignore[arg-type]
