"""OpenAI Responses (`POST /v1/responses`), plain and streamed."""

from __future__ import annotations

import time
from typing import Any

import orjson

from fairmeter.testing.behaviour import Behaviour
from fairmeter.testing.errors import openai_error, openai_headers
from fairmeter.testing.openai_chat import served_tier
from fairmeter.testing.sse import new_id, typed_event
from fairmeter.testing.tokens import input_tokens, output_chunks, with_override, words
from fairmeter.testing.wire import Reply

OVERLOADED = "The server is overloaded or not ready yet."


def _usage(prompt: int, completion: int, override: Any) -> dict[str, Any]:
    usage = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }
    return with_override(usage, override, ("input_tokens", "output_tokens"))


def _input_messages(value: Any) -> list[Any]:
    """The input as messages: a string is one user message; items carry text in `content` or `output`."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        return []
    return [item.get("content", item.get("output")) if isinstance(item, dict) else item for item in value]


class _Shape:
    """The fields of one response object that stay the same across its stream events."""

    def __init__(self, body: dict[str, Any], model: str) -> None:
        self.body = body
        self.model = model
        self.id = new_id("resp_")
        self.item_id = new_id("msg_")
        self.created = int(time.time())

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None,
        incomplete: bool = False,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = self.body
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": False,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "prompt_cache_key": None,
            "reasoning": {"effort": None, "summary": None},
            "safety_identifier": None,
            "service_tier": served_tier(body),
            "store": body.get("store", True),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_logprobs": 0,
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": {},
        }

    def item(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [self.part(text)]
        return {"id": self.item_id, "type": "message", "status": status, "content": content, "role": "assistant"}

    @staticmethod
    def part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def create_response(body: dict[str, Any], behaviour: Behaviour) -> Reply:
    """Answer a Responses API request the way OpenAI does."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return openai_error(
            400, "Missing required parameter: 'model'.", code="missing_required_parameter", param="model"
        )
    if "input" not in body and "previous_response_id" not in body and "prompt" not in body:
        return openai_error(
            400, "Missing required parameter: 'input'.", code="missing_required_parameter", param="input"
        )
    chunks, truncated = output_chunks(behaviour.chunks, body.get("max_output_tokens"))
    prompt = input_tokens(_input_messages(body.get("input")), body.get("instructions"))
    usage = _usage(prompt, chunks, behaviour.usage)
    shape = _Shape(body, model)
    pieces = words(chunks)
    text = "".join(pieces)
    final_status = "incomplete" if truncated else "completed"
    if body.get("stream") is not True:
        final = shape.response(final_status, [shape.item(final_status, text)], usage, truncated)
        return Reply(200, openai_headers(new_id("req_")), orjson.dumps(final))

    start = shape.response("in_progress", [], None)
    ids = {"item_id": shape.item_id, "output_index": 0}
    at = {**ids, "content_index": 0}
    objects: list[dict[str, Any]] = [
        {"type": "response.created", "response": start},
        {"type": "response.in_progress", "response": start},
        {"type": "response.output_item.added", "output_index": 0, "item": shape.item("in_progress", None)},
        {"type": "response.content_part.added", **at, "part": shape.part("")},
        *({"type": "response.output_text.delta", **at, "delta": w, "logprobs": []} for w in pieces),
        {"type": "response.output_text.done", **at, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **at, "part": shape.part(text)},
        {"type": "response.output_item.done", "output_index": 0, "item": shape.item(final_status, text)},
        {
            "type": f"response.{final_status}",
            "response": shape.response(final_status, [shape.item(final_status, text)], usage, truncated),
        },
    ]
    cut = behaviour.overload_after
    if cut is not None:
        objects = [*objects[:cut], _failure(shape, cut)]
    for number, obj in enumerate(objects):
        obj["sequence_number"] = number
    events = [typed_event(obj) for obj in objects]
    return Reply(200, openai_headers(new_id("req_"), "text/event-stream; charset=utf-8"), events=events)


def _failure(shape: _Shape, position: int) -> dict[str, Any]:
    """How a stream fails: an `error` event before the response exists, `response.failed` after."""
    if position == 0:
        return {"type": "error", "code": "server_error", "message": OVERLOADED, "param": None}
    error = {"code": "server_error", "message": OVERLOADED}
    return {"type": "response.failed", "response": shape.response("failed", [], None, error=error)}
