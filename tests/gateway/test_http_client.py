"""The upstream HTTP/1.1 client against scripted servers on real sockets: framing, reuse, failures, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from fairmeter.gateway.http_client import HIGH_WATER, ConnectFailed, HttpClient, Origin, UpstreamError, split_url

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and body (Content-Length framed)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


class Scripted:
    """A server running ``handler`` per connection; ``stop`` ends the handlers and closes every connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        # A handler ends by returning, by its peer going away, or by ``stop`` (cancelled): all are normal here.
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, asyncio.CancelledError):
            await self.handler(reader, writer)
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.CancelledError):
            await writer.wait_closed()
        self.tasks.discard(task)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


async def serve(handler: Handler, tls: ssl.SSLContext | None = None) -> tuple[Scripted, int]:
    scripted = Scripted(handler)
    scripted.server = await asyncio.start_server(scripted._run, "127.0.0.1", 0, ssl=tls)
    return scripted, scripted.server.sockets[0].getsockname()[1]


def origin(port: int, scheme: str = "http") -> Origin:
    return Origin(scheme, "127.0.0.1", port)


@contextlib.asynccontextmanager
async def against(handler: Handler, read_timeout: float = 2.0) -> AsyncIterator[tuple[HttpClient, Origin]]:
    """A client (2 s to connect, ``read_timeout`` per read) and the origin of a scripted server."""
    server, port = await serve(handler)
    client = HttpClient(2.0, read_timeout)
    try:
        yield client, origin(port)
    finally:
        await client.close()
        await server.stop()


def test_split_url_keeps_the_path_and_query_and_default_ports() -> None:
    o, path = split_url("https://api.openai.com/v1")
    assert (o.scheme, o.host, o.port, path) == ("https", "api.openai.com", 443, "/v1")
    assert o.host_header == b"api.openai.com"
    o, path = split_url("http://127.0.0.1:8080/a?b=1")
    assert (o.port, path, o.host_header) == (8080, "/a?b=1", b"127.0.0.1:8080")
    with pytest.raises(ValueError, match="not an http"):
        split_url("ftp://example.com/")


def test_a_length_framed_response_is_read_whole_and_its_connection_reused() -> None:
    connections = 0
    requests: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                head, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            requests.append(head + body)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n")
            writer.write(b'Content-Length: 11\r\nX-Thing: a\r\n\r\n{"ok":true}')
            await writer.drain()
        writer.close()

    async def main() -> None:
        async with against(handler) as (client, at):
            for i in range(3):
                resp = await client.request("POST", at, "/v1/x", {"content-type": "application/json"}, b"[%d]" % i)
                assert resp.status == 200
                assert resp.content_type == "application/json"
                assert (b"X-Thing", b"a") in resp.raw_headers  # as sent: the gateway relays them unchanged
                assert await resp.read() == b'{"ok":true}'
                resp.release()

    asyncio.run(main())
    assert connections == 1
    assert requests[0].startswith(b"POST /v1/x HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"content-length: 3\r\n" in requests[0] and requests[2].endswith(b"\r\n\r\n[2]")


def test_a_chunked_body_arrives_chunk_by_chunk_before_the_response_ends() -> None:
    second = asyncio.Event

    async def main() -> None:
        go_on = second()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"7\r\ndata: 1\r\n")
            await writer.drain()
            await go_on.wait()  # the second chunk leaves only once the client has the first
            writer.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
            await writer.drain()

        async with against(handler) as (client, at):
            resp = await client.request("POST", at, "/", {}, b"{}")
            assert resp.content_type == "text/event-stream"
            got = []
            async for chunk in resp.chunks():
                got.append(chunk)
                go_on.set()
            resp.release()
            assert got == [b"data: 1", b"data: 2"]

    asyncio.run(main())


@pytest.mark.parametrize(
    ("reply", "body"),
    [
        # no length, not chunked: the body ends when the connection does
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it", b"all of it"),
        # keep-alive was not refused, but the server goes away while the connection is idle
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok"),
    ],
    ids=["body-delimited-by-close", "closed-while-idle"],
)
def test_a_connection_the_server_closes_is_read_to_its_end_and_not_reused(reply: bytes, body: bytes) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(reply)
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with against(handler) as (client, at):
            for _ in range(2):
                resp = await client.request("GET", at, "/", {}, None)
                assert await resp.read() == body
                resp.release()
                await asyncio.sleep(0.05)  # the close reaches the client

    asyncio.run(main())
    assert connections == 2


def test_a_body_cut_short_raises_after_what_arrived() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()
        writer.transport.abort()

    async def main() -> None:
        async with against(handler) as (client, at):
            resp = await client.request("POST", at, "/", {}, b"")
            got = []
            with pytest.raises(UpstreamError, match="closed the connection before the response ended"):
                async for chunk in resp.chunks():
                    got.append(chunk)
            assert b"".join(got) == b"0123456789"
            resp.release()

    asyncio.run(main())


def test_a_connection_reset_before_the_headers_is_an_upstream_error_not_a_connect_failure() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.transport.abort()

    async def main() -> None:
        async with against(handler) as (client, at):
            with pytest.raises(UpstreamError) as info:
                await client.request("POST", at, "/", {}, b"x")
            assert not isinstance(info.value, ConnectFailed)  # the request was sent: it must not be retried

    asyncio.run(main())


def test_no_answer_within_the_read_timeout_raises_timeout_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def main() -> None:
        async with against(handler, 0.2) as (client, at):
            with pytest.raises(TimeoutError):
                await client.request("POST", at, "/", {}, b"x")

    asyncio.run(main())


def test_a_stalled_body_raises_timeout_error_between_chunks() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async def main() -> None:
        async with against(handler, 0.2) as (client, at):
            resp = await client.request("POST", at, "/", {}, b"x")
            got = []
            with pytest.raises(TimeoutError):
                async for chunk in resp.chunks():
                    got.append(chunk)
            assert got == [b"abc"]
            resp.close()

    asyncio.run(main())


def test_a_refused_connection_is_a_connect_failure() -> None:
    async def main() -> None:
        server, port = await serve(lambda r, w: asyncio.sleep(0))
        await server.stop()
        client = HttpClient(2.0, 2.0)
        with pytest.raises(ConnectFailed, match="cannot connect"):
            await client.request("GET", origin(port), "/", {}, None)
        await client.close()

    asyncio.run(main())


def test_on_sent_is_called_once_the_request_is_written_and_never_when_nothing_was_sent() -> None:
    seen: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        seen.append("received")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async def main() -> None:
        async with against(handler) as (client, at):  # a fresh connection: opened first, then written
            resp = await client.request("POST", at, "/", {}, b"{}", lambda: seen.append("sent"))
            resp.release()
        server, port = await serve(handler)
        await server.stop()
        client = HttpClient(2.0, 2.0)
        with pytest.raises(ConnectFailed):
            await client.request("POST", origin(port), "/", {}, b"{}", lambda: seen.append("sent to nobody"))
        with pytest.raises(UpstreamError, match="nothing was sent"):
            await client.request("POST", origin(port), "/", {"x-a": "b\nc"}, b"{}", lambda: seen.append("bad"))
        await client.close()

    asyncio.run(main())
    assert seen == ["sent", "received"]


def test_a_response_that_is_not_http_is_an_upstream_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    async def main() -> None:
        async with against(handler) as (client, at):
            with pytest.raises(UpstreamError, match=r"not valid HTTP/1\.1"):
                await client.request("GET", at, "/", {}, None)

    asyncio.run(main())


def test_a_header_value_with_a_line_break_is_never_sent() -> None:
    async def main() -> None:
        client = HttpClient(2.0, 2.0)
        with pytest.raises(UpstreamError, match="nothing was sent"):
            await client.request("GET", origin(1), "/", {"x-a": "b\r\nx-injected: 1"}, None)

    asyncio.run(main())


def test_a_fast_upstream_and_a_slow_reader_buffer_a_bounded_amount() -> None:
    size = 8 * 1024 * 1024

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"x" * 65536
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()
        writer.close()

    async def main() -> None:
        async with against(handler, 5.0) as (client, at):
            resp = await client.request("GET", at, "/", {}, None)
            total, most = 0, 0
            async for chunk in resp.chunks():
                total += len(chunk)
                most = max(most, resp._conn.buffered)
                await asyncio.sleep(0.001)  # a slow client
            resp.release()
            assert total == size
            assert most <= HIGH_WATER + 512 * 1024  # reading paused at the high-water mark, not the whole body

    asyncio.run(main())


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_https_is_verified_and_works_with_a_trusted_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_request(reader)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret")
        await writer.drain()

    async def main() -> None:
        server, port = await serve(handler, server_tls)
        untrusting = HttpClient(2.0, 2.0)  # the system's trust store does not know this certificate
        with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting.request("GET", origin(port, "https"), "/", {}, None)
        await untrusting.close()
        trusting = HttpClient(2.0, 2.0, tls=ssl.create_default_context(cafile=str(cert)))
        resp = await trusting.request("GET", origin(port, "https"), "/", {}, None)
        assert (resp.status, await resp.read()) == (200, b"secret")
        resp.release()
        await trusting.close()
        await server.stop()

    asyncio.run(main())
