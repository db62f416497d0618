"""OpenAI Chat Completions (`POST /v1/chat/completions`), plain and streamed."""

from __future__ import annotations

import time
from typing import Any

import orjson

from fairmeter.testing.behaviour import Behaviour
from fairmeter.testing.errors import openai_error, openai_error_body, openai_headers
from fairmeter.testing.sse import DONE, data_frame, new_id
from fairmeter.testing.tokens import input_tokens, output_chunks, with_override, words
from fairmeter.testing.wire import Reply

FINGERPRINT = "fp_emulator01"


def _usage(prompt: int, completion: int, override: Any) -> dict[str, Any]:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    return with_override(usage, override, ("prompt_tokens", "completion_tokens"))


def served_tier(body: dict[str, Any]) -> str:
    """The tier OpenAI reports serving a request in: the one asked for, ``default`` for auto or none."""
    tier = body.get("service_tier")
    return tier if isinstance(tier, str) and tier in ("flex", "priority", "scale") else "default"


def chat_completion(body: dict[str, Any], behaviour: Behaviour) -> Reply:
    """Answer a chat completion request the way OpenAI does."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return openai_error(400, "you must provide a model parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return openai_error(
            400, "Missing required parameter: 'messages'.", code="missing_required_parameter", param="messages"
        )
    n = body.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else 1
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    chunks, truncated = output_chunks(behaviour.chunks, limit)
    finish = "length" if truncated else "stop"
    prompt = input_tokens(messages)
    usage = _usage(prompt, chunks * choices, behaviour.usage)
    if body.get("stream") is True:
        return _stream(body, model, choices, chunks, finish, usage, behaviour)
    text = "".join(words(chunks))
    reply = {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": finish,
            }
            for i in range(choices)
        ],
        "usage": usage,
        "service_tier": served_tier(body),
        "system_fingerprint": FINGERPRINT,
    }
    return Reply(200, openai_headers(new_id("req_")), orjson.dumps(reply))


def _stream(
    body: dict[str, Any],
    model: str,
    choices: int,
    chunks: int,
    finish: str,
    usage: dict[str, Any],
    behaviour: Behaviour,
) -> Reply:
    options = body.get("stream_options")
    options = options if isinstance(options, dict) else {}
    include_usage = options.get("include_usage") is True
    obfuscate = options.get("include_obfuscation", True) is not False
    base: dict[str, Any] = {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "service_tier": served_tier(body),
        "system_fingerprint": FINGERPRINT,
    }

    def frame(choice: dict[str, Any] | None) -> bytes:
        chunk = dict(base, choices=[] if choice is None else [choice])
        if include_usage:
            chunk["usage"] = usage if choice is None else None
        if obfuscate:
            chunk["obfuscation"] = "emu"
        return data_frame(orjson.dumps(chunk))

    def choice(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    events = [frame(choice(i, {"role": "assistant", "content": "", "refusal": None})) for i in range(choices)]
    for word in words(chunks):
        events.extend(frame(choice(i, {"content": word})) for i in range(choices))
    events.extend(frame(choice(i, {}, finish)) for i in range(choices))
    if include_usage:
        events.append(frame(None))
    events.append(DONE)
    if behaviour.overload_after is not None:
        # OpenAI reports a mid-stream failure as a data line carrying an error object, without [DONE].
        error = openai_error_body("The server is overloaded or not ready yet.", "server_error")
        events = [*events[: behaviour.overload_after], data_frame(orjson.dumps(error))]
    return Reply(200, openai_headers(new_id("req_"), "text/event-stream; charset=utf-8"), events=events)
