"""The upstream client: kept-alive connections per gateway process (``http_client``), and what is forwarded.

The client was chosen by measurement (docs/architecture.md): httpx's pool collapsed under concurrency, and
aiohttp's request and response objects cost about a fifth of the gateway's CPU per call. A request is retried
only when nothing can have been sent (the connection could not be opened); never after a response or a
partial send.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import lru_cache

from fairmeter.config import Config, Upstream
from fairmeter.gateway.asgi import http_date
from fairmeter.gateway.http_client import ConnectFailed, HttpClient, Origin, Response, split_url

# Headers never forwarded upstream: hop-by-hop, the client's fairmeter credentials, and ours.
_DROP_REQUEST = frozenset(
    {
        b"host",
        b"connection",
        b"keep-alive",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"authorization",
        b"x-api-key",
        b"accept-encoding",
        b"idempotency-key",
    }
)
# Hop-by-hop headers, and the length (the server frames the body again). ``date`` and ``server`` are the
# provider's and pass through: the server adds neither (`gateway.server.uvicorn_config`).
_DROP_RESPONSE = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})

CONNECT_RETRIES = 2


class UpstreamClient:
    """Sends calls to the configured providers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._client: HttpClient | None = None

    async def start(self) -> None:
        self._client = HttpClient(self.config.upstream_connect_timeout_s, self.config.upstream_timeout_s)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    @staticmethod
    def forward_headers(raw: list[tuple[bytes, bytes]], upstream: Upstream) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, value in raw:
            if name not in _DROP_REQUEST and not name.startswith(b"fairmeter-"):
                headers[name.decode("latin-1")] = value.decode("latin-1")
        headers["accept-encoding"] = "identity"
        if upstream.api_key:
            if upstream.name == "anthropic":
                headers["x-api-key"] = upstream.api_key
            else:
                headers["authorization"] = "Bearer " + upstream.api_key
        return headers

    async def send(
        self,
        method: str,
        upstream: Upstream,
        path: str,
        headers: dict[str, str],
        body: bytes | None,
        on_sent: Callable[[], None] | None = None,
    ) -> Response:
        """Open the upstream response (headers read, body not yet); retries only failed connects. ``on_sent``:
        called once the request is written (a connect that failed sent nothing)."""
        assert self._client is not None, "UpstreamClient.start() was not called"
        origin, target = _target(upstream.base_url, upstream.name, path)
        for attempt in range(CONNECT_RETRIES + 1):
            try:
                return await self._client.request(method, origin, target, headers, body, on_sent)
            except ConnectFailed:
                if attempt == CONNECT_RETRIES:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")


@lru_cache(maxsize=256)
def _target(base_url: str, name: str, path: str) -> tuple[Origin, str]:
    """The origin and request target of ``path`` on an upstream: OpenAI's base URL includes ``/v1`` (as its SDK
    uses it), so a ``/v1/…`` path loses that prefix there; Anthropic's does not."""
    origin, base = split_url(base_url)
    if name == "openai" and path.startswith("/v1/"):
        path = path[3:]
    return origin, base.rstrip("/") + path


def response_headers(resp: Response, call_id: str, keep_length: bool) -> list[tuple[bytes, bytes]]:
    """Upstream response headers for the client, plus ``fairmeter-call-id`` (and a ``Date`` when the upstream
    sent none, as RFC 9110 asks of an intermediary that forwards a response)."""
    out: list[tuple[bytes, bytes]] = []
    dated = False
    for name, value in resp.raw_headers:
        lname = name.decode("latin-1").lower()
        if lname in _DROP_RESPONSE and not (keep_length and lname == "content-length"):
            continue
        dated = dated or lname == "date"
        out.append((name.lower(), value))
    if not dated:
        out.append((b"date", http_date()))
    out.append((b"fairmeter-call-id", call_id.encode()))
    return out
