"""A response's head leaves with its body in one write, and is never held past the loop's next turn.

The transport's rules against a recording transport (each write as the socket would get it), then the
protocol in a real uvicorn on a real port, read with a raw socket.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st

from fairmeter.gateway.http_protocol import GatewayHttpProtocol, HeadWithBody

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n"


class Recording:
    """What reaches the socket: one entry per write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def held(loop: asyncio.AbstractEventLoop) -> tuple[Recording, HeadWithBody]:
    rec = Recording()
    return rec, HeadWithBody(rec, loop)  # type: ignore[arg-type]


def turn(loop: asyncio.AbstractEventLoop) -> None:
    """Let the loop run what is due (a callback scheduled with ``call_soon`` included)."""
    loop.run_until_complete(asyncio.sleep(0))


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_a_head_and_its_body_leave_in_one_write(loop: asyncio.AbstractEventLoop) -> None:
    rec, t = held(loop)
    t.write(HEAD)
    assert rec.writes == []
    t.write(b"body")
    assert rec.writes == [HEAD + b"body"]
    turn(loop)
    assert rec.writes == [HEAD + b"body"]  # the turn's release finds nothing held


def test_a_head_with_nothing_after_it_leaves_at_the_loop_s_next_turn(loop: asyncio.AbstractEventLoop) -> None:
    rec, t = held(loop)
    t.write(HEAD)
    turn(loop)
    assert rec.writes == [HEAD]
    t.write(b"data: 1\n\n")  # a stream's first chunk, later
    assert rec.writes == [HEAD, b"data: 1\n\n"]


def test_closing_sends_a_held_head_first_and_a_closed_transport_gets_nothing_more(
    loop: asyncio.AbstractEventLoop,
) -> None:
    rec, t = held(loop)
    t.write(HEAD)
    t.close()
    assert rec.writes == [HEAD] and rec.closed
    rec2, t2 = held(loop)
    t2.write(HEAD)
    rec2.closed = True  # the peer went away before the loop's turn
    turn(loop)
    assert rec2.writes == []


def test_bytes_that_are_not_a_head_pass_at_once(loop: asyncio.AbstractEventLoop) -> None:
    rec, t = held(loop)
    t.write(b"0\r\n\r\n")
    assert rec.writes == [b"0\r\n\r\n"]


# An operation: a head (bytes starting "HTTP/"), other bytes, or a turn of the loop.
ops = st.lists(
    st.one_of(
        st.binary(max_size=8).map(lambda b: ("write", b"HTTP/1.1 " + b)),
        st.binary(min_size=1, max_size=8).filter(lambda b: not b.startswith(b"HTTP/")).map(lambda b: ("write", b)),
        st.just(("turn", b"")),
    ),
    max_size=12,
)


def expected(seq: list[tuple[str, bytes]], close: bool) -> list[bytes]:
    """The writes the socket should see: heads wait for the next other write, a turn, or the close."""
    out: list[bytes] = []
    pending = b""
    for op, data in seq:
        if op == "write" and data.startswith(b"HTTP/"):
            pending += data
        elif op == "write":
            out.append(pending + data)
            pending = b""
        elif pending:
            out.append(pending)
            pending = b""
    if pending:
        out.append(pending)
    return out


@settings(max_examples=60, deadline=None)
@given(ops, st.booleans())
def test_heads_wait_for_the_next_write_or_the_loop_s_turn_and_nothing_is_lost_or_reordered(
    seq: list[tuple[str, bytes]], close: bool
) -> None:
    loop = asyncio.new_event_loop()
    try:
        rec, t = held(loop)
        for op, data in seq:
            if op == "turn":
                turn(loop)
            else:
                t.write(data)
        if close:
            t.close()
        else:
            turn(loop)
    finally:
        loop.close()
    assert rec.writes == expected(seq, close)
    assert b"".join(rec.writes) == b"".join(data for op, data in seq if op == "write")
    assert rec.closed is close


# ---- the protocol in a real server ----------------------------------------------------------


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
    if scope["path"] == "/slow":  # the body comes well after the head
        await asyncio.sleep(0.6)
    await send({"type": "http.response.body", "body": b"body"})


@pytest.fixture
def server() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="uvloop", http=GatewayHttpProtocol,
                            lifespan="off", log_level="warning")  # fmt: skip
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    yield port
    srv.should_exit = True
    thread.join(10)


def request(conn: socket.socket, path: str) -> None:
    conn.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())


def read_response(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"body"):
        piece = conn.recv(65536)
        assert piece, f"the connection closed after {data!r}"
        data += piece
    return data


def test_through_uvicorn_a_slow_body_s_head_arrives_at_once_and_keep_alive_still_works(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=5) as conn:
        request(conn, "/fast")
        first = read_response(conn)
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\nbody")
        request(conn, "/slow")  # the same connection
        t0 = time.monotonic()
        head = conn.recv(65536)
        waited = time.monotonic() - t0
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and not head.endswith(b"body")
        assert waited < 0.5, f"the head waited {waited:.3f} s for its body"
        assert (head + read_response(conn)).endswith(b"\r\n\r\nbody")
