"""The providers' real error bodies and headers.

OpenAI:    {"error": {"message", "type", "param", "code"}}                 header x-request-id
Anthropic: {"type": "error", "error": {"type", "message"}, "request_id"}   header request-id

OpenAI has no 529; an injected 529 is answered with OpenAI's 503 and a server_error body.
"""

from __future__ import annotations

from typing import Any

import orjson

from fairmeter.testing.sse import new_id
from fairmeter.testing.wire import Reply

OPENAI_MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth "
    "(i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the "
    "API from your browser and are prompted for a username. You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)
ANTHROPIC_MISSING_KEY = "x-api-key header is required"

# status -> (type, code, message)
_OPENAI: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "The emulator was asked to reject this request (x-emulator-error: 400)."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided: sk-emu***********. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported.",
    ),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: (
        "tokens",
        "rate_limit_exceeded",
        "Rate limit reached for requests in organization org-emulator on tokens per min (TPM): Limit 30000, "
        "Used 30000, Requested 100. Please try again in 200ms. "
        "Visit https://platform.openai.com/account/rate-limits to learn more.",
    ),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
}

# status -> (error type, message)
_ANTHROPIC: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "The emulator was asked to reject this request (x-emulator-error: 400)."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: (
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 30,000 input tokens per minute. "
        "For details, refer to: https://docs.claude.com/en/api/rate-limits.",
    ),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


def openai_headers(request_id: str, content_type: str = "application/json") -> list[tuple[str, str]]:
    """Headers OpenAI puts on every response."""
    return [
        ("content-type", content_type),
        ("x-request-id", request_id),
        ("openai-version", "2020-10-01"),
        ("openai-processing-ms", "1"),
    ]


def anthropic_headers(request_id: str, content_type: str = "application/json") -> list[tuple[str, str]]:
    """Headers Anthropic puts on every response."""
    return [("content-type", content_type), ("request-id", request_id)]


def openai_error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def anthropic_error_body(error_type: str, message: str, request_id: str | None) -> dict[str, Any]:
    """Anthropic's error object (`request_id` is absent from errors sent inside an SSE stream)."""
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def openai_error(
    status: int, message: str | None = None, *, code: str | None = None, param: str | None = None
) -> Reply:
    """A complete OpenAI error reply; 529 (Anthropic-only) becomes 503.

    Without a `message` the status's stock message and code are used; with one, `code` is taken as given.
    """
    if status == 529:
        status = 503
    error_type, stock_code, stock_message = _OPENAI.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, f"Error {status}.")
    )
    if message is None:
        message, code = stock_message, stock_code
    body = openai_error_body(message, error_type, code, param)
    return Reply(status, openai_headers(new_id("req_")), orjson.dumps(body))


def anthropic_error(status: int, message: str | None = None) -> Reply:
    """A complete Anthropic error reply."""
    error_type, default_message = _ANTHROPIC.get(
        status, ("api_error" if status >= 500 else "invalid_request_error", f"Error {status}.")
    )
    request_id = new_id("req_011")
    headers = anthropic_headers(request_id)
    if status == 429:
        headers.append(("retry-after", "1"))
    body = anthropic_error_body(error_type, message or default_message, request_id)
    return Reply(status, headers, orjson.dumps(body))
