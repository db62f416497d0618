"""Anthropic Messages (``/v1/messages``) wire format → `UsageReport`.

Usage fields (the body's ``usage``; in a stream, ``message_start.message.usage`` then each
``message_delta.usage``):

* ``input_tokens`` are the uncached input only; ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens`` come on top (total input = the three together).
* ``cache_creation`` splits cache writes by TTL (``ephemeral_5m_input_tokens``,
  ``ephemeral_1h_input_tokens``). Without it every cache write is 5m (the default TTL). The 1h
  bucket is taken as reported (up to the total) and the rest is 5m, so no token is dropped.
* ``output_tokens`` is all billed output, thinking included
  (``output_tokens_details.thinking_tokens`` is a read-only breakdown).
* ``server_tool_use.web_search_requests`` counts billed web searches (web fetches carry no fee).

In a stream, ``message_delta`` usage is cumulative: the last one wins, field by field, over
``message_start``. Newer API versions also send the input fields there (they grow when server
tools add input). The ``cache_creation`` split only comes with ``message_start``.

Status: ``message_stop`` or a ``message_delta`` with a ``stop_reason`` makes usage complete. An
``error`` event before ``message_start`` (e.g. ``overloaded_error``) is ``error`` (cost 0); after
it, the stream was cut and the usage seen so far is ``partial``.
"""

from __future__ import annotations

import contextlib
from typing import Any, TypeGuard

import orjson

from fairmeter.usage.jsonfields import count as _count
from fairmeter.usage.jsonfields import load_object as _load
from fairmeter.usage.jsonfields import text_bytes as _text_bytes
from fairmeter.usage.model import Usage, UsageReport, UsageStatus

_TEXT_FIELDS = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}
_DEFAULT_TIERS = frozenset({"standard", "default"})


def _is_usage(value: object) -> TypeGuard[dict[str, Any]]:
    return isinstance(value, dict) and any(type(value.get(k)) is int for k in ("input_tokens", "output_tokens"))


def _pick(key: str, start: dict[str, Any], last: dict[str, Any] | None) -> int:
    """A cumulative count: the last ``message_delta``'s value when it has one, else ``message_start``'s."""
    if last is not None and type(last.get(key)) is int:
        return _count(last, key)
    return _count(start, key)


def _web_searches(usage: object) -> int | None:
    if isinstance(usage, dict):
        tools = usage.get("server_tool_use")
        if isinstance(tools, dict) and type(tools.get("web_search_requests")) is int:
            return _count(tools, "web_search_requests")
    return None


def _thinking(usage: object) -> int | None:
    if isinstance(usage, dict):
        details = usage.get("output_tokens_details")
        if isinstance(details, dict) and type(details.get("thinking_tokens")) is int:
            return _count(details, "thinking_tokens")
    return None


def _usage(start: dict[str, Any], last: dict[str, Any] | None = None) -> Usage:
    """Combine ``message_start`` usage (or a body's usage) with the last ``message_delta`` usage."""
    writes = _pick("cache_creation_input_tokens", start, last)
    split = last.get("cache_creation") if last is not None and isinstance(last.get("cache_creation"), dict) else None
    if split is None:
        split = start.get("cache_creation")
    one_hour = min(_count(split, "ephemeral_1h_input_tokens"), writes)
    output = _pick("output_tokens", start, last)
    searches = _web_searches(last)
    if searches is None:
        searches = _web_searches(start) or 0
    thinking = _thinking(last)
    if thinking is None:
        thinking = _thinking(start) or 0
    return Usage(
        uncached_input_tokens=_pick("input_tokens", start, last),
        cache_read_tokens=_pick("cache_read_input_tokens", start, last),
        cache_write_5m_tokens=writes - one_hour,
        cache_write_1h_tokens=one_hour,
        output_tokens=output,
        reasoning_tokens=min(thinking, output),
        web_search_requests=searches,
    )


def _error_type(obj: dict[str, Any] | None, default: str = "error") -> str:
    error = obj.get("error") if obj is not None else None
    if isinstance(error, dict):
        kind = error.get("type")
        if isinstance(kind, str) and kind:
            return kind
    return default


def _tier_notes(usage: dict[str, Any]) -> tuple[str, ...]:
    tier = usage.get("service_tier")
    if isinstance(tier, str) and tier not in _DEFAULT_TIERS:
        return (f"service_tier={tier}",)
    return ()


def _content_bytes(blocks: object) -> tuple[int, int]:
    """(UTF-8 bytes, blocks) of model-written text in a message's ``content`` blocks."""
    size = parts = 0
    if isinstance(blocks, list):
        for block in blocks:
            if not isinstance(block, dict):
                continue
            n = _text_bytes(block.get("text")) + _text_bytes(block.get("thinking"))
            if block.get("type") == "tool_use" and isinstance(block.get("input"), dict):
                with contextlib.suppress(TypeError):  # orjson.JSONEncodeError: too deep, too large an int
                    n += len(orjson.dumps(block["input"]))
            if n:
                size += n
                parts += 1
    return size, parts


class StreamReader:
    """Reads a streamed message, one SSE ``data`` payload at a time."""

    __slots__ = ("_bytes", "_chunks", "_closed", "_error", "_final", "_last", "_model", "_start")
    usage_only = False  # no event of this wire format carries usage alone (`fairmeter.usage.reader`)

    def __init__(self) -> None:
        self._start: dict[str, Any] | None = None  # message_start usage
        self._last: dict[str, Any] | None = None  # last message_delta usage
        self._final = False  # stop_reason or message_stop seen
        self._closed = False  # nothing after message_stop or error counts
        self._bytes = 0
        self._chunks = 0
        self._model: str | None = None
        self._error: str | None = None

    def feed(self, data: bytes) -> None:
        """Take one event's data (a JSON event object with a ``type``)."""
        if self._closed:
            return
        obj = _load(data)
        if obj is None:
            return
        kind = obj.get("type")
        if kind == "content_block_delta":
            if self._start is None:
                return
            delta = obj.get("delta")
            if isinstance(delta, dict):
                dtype = delta.get("type")
                field = _TEXT_FIELDS.get(dtype) if isinstance(dtype, str) else None
                n = _text_bytes(delta.get(field)) if field is not None else 0
                if n:
                    self._bytes += n
                    self._chunks += 1
        elif kind == "message_delta":
            if self._start is None:
                return
            usage = obj.get("usage")
            if _is_usage(usage):
                self._last = usage
            delta = obj.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason") is not None:
                self._final = True
        elif kind == "message_start":
            message = obj.get("message")
            if self._start is None and isinstance(message, dict):
                usage = message.get("usage")
                if _is_usage(usage):
                    self._start = usage
                    model = message.get("model")
                    self._model = model if isinstance(model, str) else None
        elif kind == "content_block_start":
            block = obj.get("content_block")
            if self._start is not None and isinstance(block, dict):
                n = _text_bytes(block.get("text")) + _text_bytes(block.get("thinking"))
                if n:
                    self._bytes += n
                    self._chunks += 1
        elif kind == "message_stop":
            if self._start is not None:
                self._final = self._closed = True
        elif kind == "error":
            self._error = _error_type(obj)
            self._closed = True

    def finish(self, *, ended: bool) -> UsageReport:
        """The report for everything fed so far."""
        start = self._start
        notes: tuple[str, ...] = () if ended else ("stream_cut",)
        if start is None:
            status = UsageStatus.UNKNOWN if self._error is None else UsageStatus.ERROR
            return UsageReport(status, None, self._bytes, self._chunks, self._model, self._error, notes)
        status = UsageStatus.COMPLETE if self._final else UsageStatus.PARTIAL
        return UsageReport(
            status,
            _usage(start, self._last),
            self._bytes,
            self._chunks,
            self._model,
            self._error,
            (*_tier_notes(start), *notes),
        )


def read_body(status: int, body: bytes) -> UsageReport:
    """Read a non-streamed message response (any status, any bytes)."""
    obj = _load(body)
    if not 200 <= status < 300:
        kind = _error_type(obj, f"http_{status}")
        return UsageReport(UsageStatus.ERROR, error_type=kind)
    if obj is None:
        return UsageReport(UsageStatus.UNKNOWN)
    if obj.get("type") == "error":
        return UsageReport(UsageStatus.ERROR, error_type=_error_type(obj))
    model = obj.get("model")
    model = model if isinstance(model, str) else None
    size, parts = _content_bytes(obj.get("content"))
    usage = obj.get("usage")
    if _is_usage(usage):
        return UsageReport(UsageStatus.COMPLETE, _usage(usage), size, parts, model, notes=_tier_notes(usage))
    return UsageReport(UsageStatus.UNKNOWN, None, size, parts, model)
