"""OpenAI Responses (``/v1/responses``) wire format → `UsageReport`.

Usage is reported only on the whole response object: the body, or in a stream the terminal
``response.completed``, ``response.incomplete`` or ``response.failed`` event (``.response.usage``),
where it may be null. Fields:

* ``input_tokens`` is the total input; ``input_tokens_details.cached_tokens`` are cache reads and
  ``input_tokens_details.cache_write_tokens`` cache writes, split by TTL in
  ``cache_write_tokens_details`` (``ttl_30m_tokens``, ``ttl_12h_tokens``). Both are included in
  ``input_tokens``: uncached = total − cached − cache writes.
* ``output_tokens`` is all billed output and includes ``output_tokens_details.reasoning_tokens``.
* Each ``web_search_call`` output item is one billed web search call.

A terminal event with usage is ``complete`` whatever the response's status (an incomplete or
failed response is billed for what it used). ``response.failed`` (or an ``error`` event) without
usage is ``error`` when nothing was delivered, else ``unknown`` (estimated). A stream cut before
its terminal event is ``unknown``.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from fairmeter.usage.jsonfields import count, has_count, load_object, text_bytes
from fairmeter.usage.model import Usage, UsageReport, UsageStatus
from fairmeter.usage.openai_chat import error_kind, split_input

_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Events whose ``delta`` is text the model wrote (audio deltas are base64, not text).
_TEXT_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.mcp_call_arguments.delta",
        "response.code_interpreter_call_code.delta",
        "response.shell_call_command.delta",
        "response.audio.transcript.delta",
    }
)
_DEFAULT_TIERS = frozenset({"default", "standard", "auto"})


def _usage(raw: dict[str, Any], web_searches: int) -> Usage:
    uncached, cached, writes, audio_in = split_input(count(raw, "input_tokens"), raw.get("input_tokens_details"))
    output = count(raw, "output_tokens")
    return Usage(
        uncached_input_tokens=uncached,
        cache_read_tokens=cached,
        cache_write_other=writes,
        input_audio_tokens=audio_in,
        output_tokens=output,
        reasoning_tokens=min(count(raw.get("output_tokens_details"), "reasoning_tokens"), output),
        web_search_requests=web_searches,
    )


def _is_usage(value: object) -> TypeGuard[dict[str, Any]]:
    return isinstance(value, dict) and has_count(value, "input_tokens", "output_tokens")


def _web_searches(output: object) -> int:
    if not isinstance(output, list):
        return 0
    return sum(1 for item in output if isinstance(item, dict) and item.get("type") == "web_search_call")


def _output_text(output: object) -> tuple[int, int]:
    """(UTF-8 bytes, parts) of the model-written text in a response's ``output`` items."""
    size = parts = 0
    if not isinstance(output, list):
        return 0, 0
    for item in output:
        if not isinstance(item, dict):
            continue
        n = text_bytes(item.get("arguments")) + text_bytes(item.get("input"))
        for key in ("content", "summary"):
            blocks = item.get(key)
            if isinstance(blocks, list):
                for block in blocks:
                    if isinstance(block, dict):
                        n += text_bytes(block.get("text")) + text_bytes(block.get("refusal"))
        if n:
            size += n
            parts += 1
    return size, parts


def _failure(response: dict[str, Any]) -> str:
    return error_kind(response.get("error")) or "failed"


def _notes(response: dict[str, Any]) -> tuple[str, ...]:
    notes: list[str] = []
    tier = response.get("service_tier")
    if isinstance(tier, str) and tier not in _DEFAULT_TIERS:
        notes.append(f"service_tier={tier}")
    status = response.get("status")
    if status == "incomplete":
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        notes.append(f"incomplete:{reason}" if isinstance(reason, str) else "incomplete")
    return tuple(notes)


class StreamReader:
    """Reads a streamed response, one SSE ``data`` payload at a time."""

    __slots__ = ("_bytes", "_chunks", "_error", "_model", "_notes", "_searches", "_terminal", "_usage")
    usage_only = False  # no event of this wire format carries usage alone (`fairmeter.usage.reader`)

    def __init__(self) -> None:
        self._usage: dict[str, Any] | None = None
        self._terminal: str | None = None
        self._searches = 0  # web_search_call items seen in response.output_item.done
        self._bytes = 0
        self._chunks = 0
        self._model: str | None = None
        self._error: str | None = None
        self._notes: tuple[str, ...] = ()

    def feed(self, data: bytes) -> None:
        """Take one event's data (a JSON event object with a ``type``)."""
        if self._terminal is not None:
            return
        obj = load_object(data)
        if obj is None:
            return
        kind = obj.get("type")
        if not isinstance(kind, str):
            return
        if kind in _TEXT_DELTAS:
            n = text_bytes(obj.get("delta"))
            if n:
                self._bytes += n
                self._chunks += 1
            return
        if kind == "response.output_item.done":
            item = obj.get("item")
            if isinstance(item, dict) and item.get("type") == "web_search_call":
                self._searches += 1
            return
        if kind == "error":
            if self._error is None:
                nested = obj.get("error")
                self._error = _failure({"error": nested if isinstance(nested, dict) else obj})
            return
        response = obj.get("response")
        if not isinstance(response, dict):
            return
        model = response.get("model")
        if isinstance(model, str):
            self._model = model
        if kind in _TERMINAL:
            self._terminal = kind
            self._notes = _notes(response)
            self._searches = max(self._searches, _web_searches(response.get("output")))
            usage = response.get("usage")
            if _is_usage(usage):
                self._usage = usage
            if kind == "response.failed":
                self._error = _failure(response)

    def finish(self, *, ended: bool) -> UsageReport:
        """The report for everything fed so far."""
        notes = self._notes if ended else (*self._notes, "stream_cut")
        usage: Usage | None = None
        if self._usage is not None:
            status, usage = UsageStatus.COMPLETE, _usage(self._usage, self._searches)
        elif self._error is not None and self._chunks == 0:
            status = UsageStatus.ERROR
        else:
            status = UsageStatus.UNKNOWN
        return UsageReport(status, usage, self._bytes, self._chunks, self._model, self._error, notes)


def read_body(status: int, body: bytes) -> UsageReport:
    """Read a non-streamed response object (any status, any bytes)."""
    obj = load_object(body)
    if not 200 <= status < 300:
        kind = _failure(obj) if obj is not None and isinstance(obj.get("error"), dict) else f"http_{status}"
        return UsageReport(UsageStatus.ERROR, error_type=kind)
    if obj is None:
        return UsageReport(UsageStatus.UNKNOWN)
    model = obj.get("model")
    model = model if isinstance(model, str) else None
    output = obj.get("output")
    size, parts = _output_text(output)
    usage = obj.get("usage")
    if _is_usage(usage):
        return UsageReport(
            UsageStatus.COMPLETE, _usage(usage, _web_searches(output)), size, parts, model, notes=_notes(obj)
        )
    failed = obj.get("status") == "failed" or isinstance(obj.get("error"), dict)
    error = _failure(obj) if failed else None
    if failed and parts == 0:
        return UsageReport(UsageStatus.ERROR, None, 0, 0, model, error)
    return UsageReport(UsageStatus.UNKNOWN, None, size, parts, model, error)
