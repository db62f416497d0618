"""Small ASGI helpers: read a bounded body, send a whole response."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from email.utils import formatdate
from functools import lru_cache
from typing import Any

from fairmeter.errors import InvalidRequest, RequestTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


class ClientGone(Exception):
    """The client closed its connection before its request body arrived in full."""


def header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return v  # type: ignore[no-any-return]
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refused with 413 before reading when Content-Length is over ``limit``."""
    raw_len = header(scope, b"content-length")
    if raw_len is not None:
        try:
            declared = int(raw_len)
        except ValueError:
            raise InvalidRequest("The Content-Length header is not a number.") from None
        if declared > limit:
            raise RequestTooLarge(
                f"The request body is {declared:,} bytes; this gateway accepts at most {limit:,} bytes."
            )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("the client closed its connection before sending the whole request body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"The request body is over this gateway's limit of {limit:,} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def http_date() -> bytes:
    """The current time as an HTTP ``Date`` value (formatted once per second)."""
    return _http_date(int(time.time()))


@lru_cache(maxsize=1)
def _http_date(second: int) -> bytes:
    return formatdate(second, usegmt=True).encode()


async def send_whole(send: Send, status: int, headers: Headers, body: bytes) -> None:
    """A response fairmeter makes itself (an error, a refusal, a replay, the API), with its ``Date``."""
    if not any(name == b"date" for name, _ in headers):
        headers = [*headers, (b"date", http_date())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
