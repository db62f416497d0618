"""Server-sent-event framing and provider-style ids."""

from __future__ import annotations

import os
from itertools import count
from typing import Any

import orjson

# Ids: a random per-process prefix and a counter, so ids are unique without paying for randomness per call.
_PREFIX = os.urandom(6).hex()
_SERIAL = count(1)


def new_id(prefix: str) -> str:
    """A unique id in the provider's style, e.g. `req_…`, `chatcmpl-…`, `msg_…`."""
    return f"{prefix}{_PREFIX}{next(_SERIAL):012x}"


def data_frame(payload: bytes) -> bytes:
    """`data: <payload>` (OpenAI chat completions: no event line)."""
    return b"data: " + payload + b"\n\n"


def event_frame(event: str, payload: bytes) -> bytes:
    """`event: <type>` then `data: <payload>` (Anthropic and OpenAI Responses)."""
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


def typed_event(obj: dict[str, Any]) -> bytes:
    """An event frame named after the object's own `type`."""
    return event_frame(str(obj["type"]), orjson.dumps(obj))


DONE = data_frame(b"[DONE]")
