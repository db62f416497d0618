"""Refusals rendered in the route's provider error shape, with fairmeter's stable codes."""

from __future__ import annotations

import orjson

from fairmeter.errors import FairmeterError, MethodNotAllowed

Headers = list[tuple[bytes, bytes]]

_OPENAI_TYPES = {401: "authentication_error", 402: "insufficient_quota", 404: "invalid_request_error"}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    502: "api_error",
    504: "api_error",
}


def error_body(
    provider: str,
    status: int,
    code: str,
    message: str,
    param: str | None = None,
    details: dict[str, object] | None = None,
) -> bytes:
    """The JSON body of an error in ``provider``'s shape; ``details`` ride in the error object under ``code``'s
    name (e.g. ``"allowance_exhausted": {"resets_at": …}``), where the SDKs keep unknown fields."""
    extra = {code: details} if details else {}
    if provider == "anthropic":
        etype = _ANTHROPIC_TYPES.get(status, "invalid_request_error")
        return orjson.dumps({"type": "error", "error": {"type": etype, "message": message, "code": code, **extra}})
    etype = _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return orjson.dumps({"error": {"message": message, "type": etype, "param": param, "code": code, **extra}})


def error_headers(call_id: str, retryable: bool, body_len: int) -> Headers:
    headers: Headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(body_len).encode()),
        (b"fairmeter-call-id", call_id.encode()),
    ]
    if retryable:
        headers.append((b"retry-after", b"1"))
    else:
        headers.append((b"x-should-retry", b"false"))
    return headers


def render(provider: str, call_id: str, exc: FairmeterError) -> tuple[int, Headers, bytes]:
    """Status, headers and body for a refusal."""
    body = error_body(provider, exc.status, exc.code, exc.message, exc.param, exc.details)
    headers = error_headers(call_id, exc.retryable, len(body))
    if isinstance(exc, MethodNotAllowed):
        headers.append((b"allow", ", ".join(exc.allow).encode()))
    return exc.status, headers, body
