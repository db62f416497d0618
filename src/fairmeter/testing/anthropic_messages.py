"""Anthropic Messages (`POST /v1/messages`, `POST /v1/messages/count_tokens`), plain and streamed."""

from __future__ import annotations

from typing import Any

import orjson

from fairmeter.testing.behaviour import Behaviour
from fairmeter.testing.errors import anthropic_error, anthropic_error_body, anthropic_headers
from fairmeter.testing.sse import new_id, typed_event
from fairmeter.testing.tokens import input_tokens, output_chunks, with_override, words
from fairmeter.testing.wire import Reply

# Usage fields reported once the output is known (in message_delta when streaming); the rest go in message_start.
_END_FIELDS = ("output_tokens", "server_tool_use")
_SERVER_TOOLS = ("web_search", "web_fetch")


def _validate(body: dict[str, Any], needs_max_tokens: bool) -> Reply | None:
    if not isinstance(body.get("model"), str) or not body["model"]:
        return anthropic_error(400, "model: Field required")
    if not isinstance(body.get("messages"), list):
        return anthropic_error(400, "messages: Field required")
    if needs_max_tokens and not isinstance(body.get("max_tokens"), int):
        return anthropic_error(400, "max_tokens: Field required")
    return None


def _prompt_tokens(body: dict[str, Any]) -> int:
    return input_tokens(body["messages"], body.get("system"))


def _uses_server_tools(body: dict[str, Any]) -> bool:
    tools = body.get("tools")
    return isinstance(tools, list) and any(
        isinstance(t, dict) and str(t.get("type", "")).startswith(_SERVER_TOOLS) for t in tools
    )


def _usage(body: dict[str, Any], prompt: int, completion: int, override: Any) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": prompt,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": completion,
        "service_tier": "standard",
    }
    if _uses_server_tools(body):
        usage["server_tool_use"] = {"web_search_requests": 0, "web_fetch_requests": 0}
    return with_override(usage, override, None)


def count_tokens(body: dict[str, Any]) -> Reply:
    """`{"input_tokens": n}` by the same formula the messages route reports."""
    invalid = _validate(body, needs_max_tokens=False)
    if invalid is not None:
        return invalid
    payload = orjson.dumps({"input_tokens": _prompt_tokens(body)})
    return Reply(200, anthropic_headers(new_id("req_011")), payload)


def create_message(body: dict[str, Any], behaviour: Behaviour) -> Reply:
    """Answer a Messages API request the way Anthropic does."""
    invalid = _validate(body, needs_max_tokens=True)
    if invalid is not None:
        return invalid
    chunks, truncated = output_chunks(behaviour.chunks, body["max_tokens"])
    usage = _usage(body, _prompt_tokens(body), chunks, behaviour.usage)
    stop_reason = "max_tokens" if truncated else "end_turn"
    pieces = words(chunks)
    message: dict[str, Any] = {
        "id": new_id("msg_01"),
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [{"type": "text", "text": "".join(pieces)}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }
    if body.get("stream") is not True:
        return Reply(200, anthropic_headers(new_id("req_011")), orjson.dumps(message))

    start_usage = {k: v for k, v in usage.items() if k not in _END_FIELDS}
    start_usage["output_tokens"] = 1  # what Anthropic reports before any output exists
    end_usage = {k: usage[k] for k in _END_FIELDS if k in usage}
    start = dict(message, content=[], stop_reason=None, usage=start_usage)
    objects: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}} for w in pieces),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": end_usage},
        {"type": "message_stop"},
    ]
    if behaviour.overload_after is not None:
        overloaded = anthropic_error_body("overloaded_error", "Overloaded", None)
        objects = [*objects[: behaviour.overload_after], overloaded]
    events = [typed_event(obj) for obj in objects]
    return Reply(200, anthropic_headers(new_id("req_011"), "text/event-stream; charset=utf-8"), events=events)
