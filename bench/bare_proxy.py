"""A bare pass-through proxy: the floor any Python gateway on this stack can reach.

Raw ASGI on uvicorn (httptools, uvloop) with one kept-alive upstream client and no metering: no
key lookup, no JSON parsing, no ledger. `bench/overhead.py --with-bare` measures it next to the
gateway, so the gateway's cost can be split into "being a Python proxy at all" and "metering".

    python bench/bare_proxy.py --port 9001 --upstream http://127.0.0.1:8900 [--client aiohttp|httpx|fairmeter]
                               [--ledger FILE]

``--client httpx`` uses httpx2 (installed in the venv) instead of aiohttp, to compare the two
upstream clients on the same workload. ``--client fairmeter`` uses the gateway's own HTTP layers instead:
its upstream client (`fairmeter.gateway.http_client`) and its server protocol, which sends a response's head
with its body (`fairmeter.gateway.http_protocol`); the cheapest proxy this stack has. Paths are forwarded as
they are (``/v1/chat/completions`` goes to ``UPSTREAM/v1/chat/completions``).

``--ledger FILE`` makes it the floor of a *metering* proxy instead: before forwarding, one SQLite
transaction (WAL, ``synchronous=NORMAL``, as the gateway) checks a cap and holds a fixed amount
against it and inserts a call row, and settles, in the same transaction, every call answered since the
previous one (the smallest design that commits the hold before forwarding: one commit per call at
concurrency 1, with the settlement riding on the next hold). No parsing, no pricing, no double entry,
no group commit. `bench/overhead.py --with-floor` runs it with ``--client fairmeter`` ("floor") beside the
same proxy without ``--ledger`` ("bare-fm"), so the difference is what a capped hold, a call row, its
settlement and one commit per request cost on this machine.
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, Protocol

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]

# Hop-by-hop headers and the ones the proxy recomputes are not forwarded, in either direction.
DROP_REQUEST = frozenset({b"host", b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"te"})
DROP_RESPONSE = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server"})


class Upstream(Protocol):
    """What the proxy needs from an HTTP client: open a response, stream its body, release it."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def forward(self, path: str, headers: dict[str, str], body: bytes) -> AsyncIterator[tuple[int, RawHeaders] | bytes]:
        """Yields ``(status, headers)`` once, then the body chunks as they arrive."""
        ...


class AiohttpUpstream:
    """aiohttp with an unbounded kept-alive pool (what the gateway uses)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._session: Any = None

    async def start(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=600),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        await self._session.close()

    async def forward(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> AsyncIterator[tuple[int, RawHeaders] | bytes]:
        resp = await self._session.request("POST", self.base + path, data=body, headers=headers)
        try:
            yield resp.status, [(k.lower(), v) for k, v in resp.raw_headers]
            async for chunk in resp.content.iter_any():
                yield chunk
        finally:
            resp.release()


class HttpxUpstream:
    """httpx2 with no connection limit, for the client comparison."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._client: Any = None

    async def start(self) -> None:
        import httpx2

        limits = httpx2.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=60)
        self._client = httpx2.AsyncClient(limits=limits, timeout=httpx2.Timeout(600.0), trust_env=False)

    async def close(self) -> None:
        await self._client.aclose()

    async def forward(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> AsyncIterator[tuple[int, RawHeaders] | bytes]:
        request = self._client.build_request("POST", self.base + path, content=body, headers=headers)
        resp = await self._client.send(request, stream=True)
        try:
            yield resp.status_code, list(resp.headers.raw)
            async for chunk in resp.aiter_raw():
                yield chunk
        finally:
            await resp.aclose()


class FloorLedger:
    """The least a metering proxy must commit per call (see the module's docstring): a capped hold, a call row,
    and the settlements of the calls answered since the last commit, in one transaction before forwarding."""

    HOLD, COST = 2_000_000, 700_000  # nano-USD, as bench/ledger.py

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA page_size=1024")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS account (id INTEGER PRIMARY KEY, cap INTEGER, pending INTEGER, posted INTEGER)"
        )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS calls (id TEXT PRIMARY KEY, held INTEGER, billed INTEGER, status TEXT)"
        )
        self.db.execute("INSERT OR IGNORE INTO account VALUES (1, ?, 0, 0)", (2**62,))
        self.cur = self.db.cursor()
        self.answered: list[str] = []
        self.n = 0

    def hold(self) -> str:
        self.n += 1
        call_id = f"{time.time_ns() // 1000:x}{self.n:08x}"
        cur = self.cur
        cur.execute("BEGIN IMMEDIATE")
        cur.execute(
            "UPDATE account SET pending = pending + ?1 WHERE id = 1 AND posted + pending + ?1 <= cap", (self.HOLD,)
        )
        if cur.rowcount != 1:
            cur.execute("ROLLBACK")
            raise RuntimeError("cap reached")
        cur.execute("INSERT INTO calls VALUES (?, ?, 0, 'pending')", (call_id, self.HOLD))
        for done in self.answered:
            cur.execute("UPDATE calls SET billed = ?, status = 'ok' WHERE id = ?", (self.COST, done))
        if self.answered:
            n = len(self.answered)
            cur.execute("UPDATE account SET pending = pending - ?, posted = posted + ? WHERE id = 1",
                        (n * self.HOLD, n * self.COST))  # fmt: skip
        cur.execute("COMMIT")
        self.answered = []
        return call_id


class FairmeterUpstream:
    """The gateway's own upstream client: kept-alive connections over raw asyncio + httptools."""

    def __init__(self, base: str) -> None:
        from fairmeter.gateway.http_client import HttpClient, split_url

        self.origin, self.prefix = split_url(base)
        self.prefix = self.prefix.rstrip("/")
        self._client = HttpClient(connect_timeout=10, read_timeout=600)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self._client.close()

    async def forward(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> AsyncIterator[tuple[int, RawHeaders] | bytes]:
        resp = await self._client.request("POST", self.origin, self.prefix + path, headers, body)
        try:
            yield resp.status, [(k.lower(), v) for k, v in resp.raw_headers]
            async for chunk in resp.chunks():
                yield chunk
        finally:
            resp.release()


class BareProxy:
    """ASGI 3 app: POST anything to the upstream, relay the answer chunk by chunk."""

    def __init__(self, upstream: Upstream, api_key: str, ledger: FloorLedger | None = None) -> None:
        self.upstream = upstream
        self.api_key = api_key
        self.ledger = ledger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = await _read_body(receive)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k not in DROP_REQUEST}
        headers["authorization"] = "Bearer " + self.api_key
        headers["accept-encoding"] = "identity"
        call_id = self.ledger.hold() if self.ledger is not None else ""
        stream = self.upstream.forward(scope["path"], headers, body)
        head = await anext(stream)
        assert isinstance(head, tuple)
        status, raw = head
        out = [(k, v) for k, v in raw if k not in DROP_RESPONSE]
        await send({"type": "http.response.start", "status": status, "headers": out})
        async for chunk in stream:
            assert isinstance(chunk, bytes)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.ledger is not None:
            self.ledger.answered.append(call_id)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.upstream.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.upstream.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def main() -> None:
    """Parse the command line and serve until interrupted."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--upstream", required=True, help="origin of the provider, e.g. http://127.0.0.1:8900")
    p.add_argument("--client", choices=("aiohttp", "httpx", "fairmeter"), default="aiohttp")
    p.add_argument("--api-key", default="bench-upstream-key")
    p.add_argument("--ledger", metavar="FILE", help="SQLite file: hold before forwarding, as a metering proxy must")
    args = p.parse_args()
    base = args.upstream.rstrip("/")
    clients: dict[str, Callable[[str], Upstream]] = {
        "aiohttp": AiohttpUpstream,
        "httpx": HttpxUpstream,
        "fairmeter": FairmeterUpstream,
    }
    upstream = clients[args.client](base)
    http: Any = "httptools"
    if args.client == "fairmeter":
        from fairmeter.gateway.http_protocol import GatewayHttpProtocol

        http = GatewayHttpProtocol
    config = uvicorn.Config(
        BareProxy(upstream, args.api_key, FloorLedger(args.ledger) if args.ledger else None),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http=http,
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=75,
    )
    what = "with a floor ledger " if args.ledger else ""
    print(f"bare proxy ({args.client}) {what}listening on http://{args.host}:{args.port}", flush=True)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
