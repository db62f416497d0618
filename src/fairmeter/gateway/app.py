"""The ASGI application: routing, start-up and the background lease tasks."""

from __future__ import annotations

import contextlib
import logging

import orjson

from fairmeter.errors import FairmeterError, InvalidRequest, MethodNotAllowed, NotFound
from fairmeter.gateway.admin import PREFIX as ADMIN_PREFIX
from fairmeter.gateway.admin import handle_admin
from fairmeter.gateway.api import handle_api
from fairmeter.gateway.asgi import ClientGone, Receive, Scope, Send, read_body, send_whole
from fairmeter.gateway.errors import error_body, error_headers, render
from fairmeter.gateway.leases import LeaseKeeper
from fairmeter.gateway.proxy import Route, metered_call
from fairmeter.gateway.state import GatewayState
from fairmeter.gateway.upstream import response_headers
from fairmeter.usage import anthropic_messages, openai_chat, openai_responses
from fairmeter.usage.request_anthropic import parse_count_tokens, parse_messages
from fairmeter.usage.request_openai import parse_chat, parse_responses

log = logging.getLogger("fairmeter.gateway")

ROUTES: dict[str, Route] = {
    "/v1/chat/completions": Route("openai", "chat", parse_chat, openai_chat.read_body, openai_chat.StreamReader),
    "/v1/responses": Route(
        "openai", "responses", parse_responses, openai_responses.read_body, openai_responses.StreamReader
    ),
    "/v1/messages": Route(
        "anthropic", "messages", parse_messages, anthropic_messages.read_body, anthropic_messages.StreamReader
    ),
}

# The routes forwarded free of charge: path → (methods, provider, api). The model list also answers HEAD (every
# general-purpose HTTP server supports GET and HEAD, RFC 9110 §9.1): it is asked upstream as a GET, and the server
# sends its status and headers without the body.
_FREE = {
    "/v1/messages/count_tokens": (("POST",), "anthropic", "count_tokens"),
    "/v1/models": (("GET", "HEAD"), "openai", "models"),
}

# The health check's methods (a load balancer may ask with either).
_HEALTH = ("GET", "HEAD")

# Every route of the gateway's own and the methods it takes (another method answers 405 with an Allow header).
_METHODS = {
    **dict.fromkeys(ROUTES, ("POST",)),
    **{path: free[0] for path, free in _FREE.items()},
    "/healthz": _HEALTH,
}


class Gateway:
    """``Gateway(state)`` is an ASGI 3 application."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.leases = LeaseKeeper(state)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        route = ROUTES.get(path)
        if route is not None and scope["method"] == "POST":
            await metered_call(self.state, route, scope, receive, send)
        elif (free := _FREE.get(path)) is not None and scope["method"] in free[0]:
            await self._free(scope, receive, send, free[1], free[2])
        elif path.startswith(ADMIN_PREFIX):
            await handle_admin(self.state, scope, receive, send)
        elif path.startswith("/fairmeter/v1/"):
            await handle_api(self.state, scope, send)
        elif path == "/healthz" and scope["method"] in _HEALTH:
            await send_whole(send, 200, [(b"content-type", b"application/json")], b'{"ok":true}')
        else:
            provider = "anthropic" if path.startswith("/v1/messages") else "openai"
            allow = _METHODS.get(path)
            exc: FairmeterError = (
                MethodNotAllowed(scope["method"], path, list(allow))
                if allow is not None
                else NotFound(f"{scope['method']} {path} is not a fairmeter route.")
            )
            status, headers, body = render(provider, self.state.new_call_id(), exc)
            await send_whole(send, status, headers, body)

    async def _free(self, scope: Scope, receive: Receive, send: Send, provider: str, api: str) -> None:
        """Forwarded free of charge (count_tokens, model list); still authenticated."""
        state = self.state
        call_id = state.new_call_id()
        try:
            await state.authenticate(scope["headers"])
            body = await read_body(scope, receive, state.config.max_body_bytes) if api == "count_tokens" else None
            if body is not None:
                try:
                    parse_count_tokens(orjson.loads(body))
                except orjson.JSONDecodeError as exc:
                    raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
        except FairmeterError as exc:
            status, headers, err = render(provider, call_id, exc)
            await send_whole(send, status, headers, err)
            return
        except ClientGone:
            return
        upstream = state.config.upstreams[provider]
        fwd = state.upstream.forward_headers(scope["headers"], upstream)
        try:
            method = "GET" if scope["method"] == "HEAD" else scope["method"]
            resp = await state.upstream.send(method, upstream, scope["path"], fwd, body)
        except Exception as exc:  # upstream unreachable
            err = error_body(provider, 502, "upstream_unreachable", f"The upstream could not be reached: {exc}.")
            await send_whole(send, 502, error_headers(call_id, False, len(err)), err)
            return
        try:
            data = await resp.read()
            await send_whole(send, resp.status, response_headers(resp, call_id, keep_length=True), data)
        finally:
            resp.release()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        await self.state.store.start()
        await self.state.upstream.start()
        await self.leases.start()

    async def shutdown(self) -> None:
        await self.leases.stop()
        await self.state.upstream.close()
        with contextlib.suppress(Exception):
            await self.state.store.close()
