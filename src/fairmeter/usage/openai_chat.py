"""OpenAI Chat Completions (``/v1/chat/completions``) wire format → `UsageReport`.

Usage fields (``usage``, in the body or, when streaming with ``stream_options.include_usage``, in
a last chunk with ``choices: []``):

* ``prompt_tokens`` is the total input. It includes ``prompt_tokens_details.cached_tokens``
  (cache reads), ``prompt_tokens_details.cache_write_tokens`` (cache writes, reported and billed
  separately from GPT-5.6 on, whose Chat Completions cache TTL is ``30m``, the only value
  ``prompt_cache_options.ttl`` accepts there) and ``prompt_tokens_details.audio_tokens``.
  So uncached = total − cached − cache writes, and audio input is part of uncached.
* ``completion_tokens`` is all billed output: text, ``reasoning_tokens``, ``audio_tokens`` and
  accepted and rejected prediction tokens.

A stream without a usage chunk (cut, or ``include_usage`` not set) is ``unknown``: the ledger then
settles an estimate (`fairmeter.pricing.estimate`). An error before anything was delivered is
``error`` (cost 0); an error after text was delivered is ``unknown``, because tokens were
visibly generated and the provider may bill them.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from fairmeter.usage.jsonfields import count, has_count, load_object, text_bytes
from fairmeter.usage.model import Usage, UsageReport, UsageStatus

# Chat Completions accepts only this cache TTL (`prompt_cache_options.ttl`).
DEFAULT_CACHE_TTL = "30m"
_DEFAULT_TIERS = frozenset({"default", "standard", "auto"})


def cache_writes(details: object, room: int) -> tuple[tuple[str, int], ...]:
    """Cache-write tokens by TTL from an OpenAI ``*_tokens_details`` object.

    ``cache_write_tokens`` is the total (capped at ``room``, the input not already counted).
    ``cache_write_tokens_details`` (Responses API) splits it into ``ttl_30m_tokens`` and
    ``ttl_12h_tokens``; the 12h bucket is taken as reported (up to the total) and the rest is
    ``30m``, the default TTL, so a missing or short split never drops tokens.
    """
    total = min(count(details, "cache_write_tokens"), room)
    if total <= 0:
        return ()
    split = details.get("cache_write_tokens_details") if isinstance(details, dict) else None
    long = min(count(split, "ttl_12h_tokens"), total)
    buckets = ((DEFAULT_CACHE_TTL, total - long), ("12h", long))
    return tuple((ttl, n) for ttl, n in buckets if n > 0)


def split_input(total: int, details: object) -> tuple[int, int, tuple[tuple[str, int], ...], int]:
    """(uncached, cache read, cache writes by TTL, audio) from an OpenAI input total and details."""
    cached = min(count(details, "cached_tokens"), total)
    writes = cache_writes(details, total - cached)
    uncached = total - cached - sum(n for _, n in writes)
    audio = min(count(details, "audio_tokens"), uncached)
    return uncached, cached, writes, audio


def _usage(raw: dict[str, Any]) -> Usage:
    uncached, cached, writes, audio_in = split_input(count(raw, "prompt_tokens"), raw.get("prompt_tokens_details"))
    output = count(raw, "completion_tokens")
    details = raw.get("completion_tokens_details")
    return Usage(
        uncached_input_tokens=uncached,
        cache_read_tokens=cached,
        cache_write_other=writes,
        input_audio_tokens=audio_in,
        output_tokens=output,
        reasoning_tokens=min(count(details, "reasoning_tokens"), output),
        output_audio_tokens=min(count(details, "audio_tokens"), output),
    )


def _is_usage(value: object) -> TypeGuard[dict[str, Any]]:
    return isinstance(value, dict) and has_count(value, "prompt_tokens", "completion_tokens")


def error_kind(value: object) -> str | None:
    """The ``code`` (else ``type``) of an OpenAI error object; None when ``value`` is not one."""
    if not isinstance(value, dict):
        return None
    for key in ("code", "type"):
        kind = value.get(key)
        if isinstance(kind, str) and kind:
            return kind
    return "error"


def _message_bytes(msg: object) -> int:
    """UTF-8 bytes of the model-written text of a message or a streamed delta."""
    if not isinstance(msg, dict):
        return 0
    content = msg.get("content")
    if len(msg) == 1 and type(content) is str:  # the usual streamed delta: text and nothing else
        return len(content) if content.isascii() else len(content.encode("utf-8", "surrogatepass"))
    n = text_bytes(content) + text_bytes(msg.get("refusal"))
    calls = msg.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                n += text_bytes(fn.get("name")) + text_bytes(fn.get("arguments"))
    legacy = msg.get("function_call")
    if isinstance(legacy, dict):
        n += text_bytes(legacy.get("name")) + text_bytes(legacy.get("arguments"))
    audio = msg.get("audio")
    if isinstance(audio, dict):
        n += text_bytes(audio.get("transcript"))
    return n


def _tier_notes(obj: dict[str, Any]) -> tuple[str, ...]:
    tier = obj.get("service_tier")
    if isinstance(tier, str) and tier not in _DEFAULT_TIERS:
        return (f"service_tier={tier}",)
    return ()


class StreamReader:
    """Reads a streamed chat completion, one SSE ``data`` payload at a time."""

    __slots__ = ("_bytes", "_chunks", "_error", "_model", "_notes", "_usage", "usage_only")

    def __init__(self) -> None:
        self._usage: dict[str, Any] | None = None
        self._bytes = 0
        self._chunks = 0
        self._model: str | None = None
        self._error: str | None = None
        self._notes: tuple[str, ...] = ()
        self.usage_only = False  # see `fairmeter.usage.reader.StreamReader`

    def feed(self, data: bytes) -> None:
        """Take one event's data (a chunk JSON, or ``[DONE]``)."""
        self.usage_only = False
        if data == b"[DONE]":
            return
        obj = load_object(data)
        if obj is None:
            return
        if self._model is None:
            model = obj.get("model")
            if isinstance(model, str):
                self._model = model
                self._notes = _tier_notes(obj)
        choices = obj.get("choices")
        if isinstance(choices, list) and choices:
            n = 0
            for choice in choices:
                if isinstance(choice, dict):
                    n += _message_bytes(choice.get("delta"))
            if n:
                self._bytes += n
                self._chunks += 1
        usage = obj.get("usage")
        if usage is not None and choices == []:
            self.usage_only = True
        if _is_usage(usage):
            self._usage = usage
        elif "error" in obj and self._error is None:
            self._error = error_kind(obj["error"])

    def finish(self, *, ended: bool) -> UsageReport:
        """The report for everything fed so far."""
        notes = self._notes if ended else (*self._notes, "stream_cut")
        usage: Usage | None = None
        if self._usage is not None:
            status, usage = UsageStatus.COMPLETE, _usage(self._usage)
        else:
            status = UsageStatus.ERROR if self._error is not None and self._chunks == 0 else UsageStatus.UNKNOWN
        return UsageReport(
            status=status,
            usage=usage,
            delivered_text_bytes=self._bytes,
            delivered_chunks=self._chunks,
            response_model=self._model,
            error_type=self._error,
            notes=notes,
        )


def read_body(status: int, body: bytes) -> UsageReport:
    """Read a non-streamed chat completion response (any status, any bytes)."""
    obj = load_object(body)
    if not 200 <= status < 300:
        kind = error_kind(obj.get("error")) if obj is not None else None
        return UsageReport(UsageStatus.ERROR, error_type=kind or f"http_{status}")
    if obj is None:
        return UsageReport(UsageStatus.UNKNOWN)
    model = obj.get("model")
    model = model if isinstance(model, str) else None
    size = parts = 0
    choices = obj.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            n = _message_bytes(choice.get("message")) if isinstance(choice, dict) else 0
            if n:
                size += n
                parts += 1
    usage = obj.get("usage")
    if _is_usage(usage):
        return UsageReport(UsageStatus.COMPLETE, _usage(usage), size, parts, model, notes=_tier_notes(obj))
    error = error_kind(obj.get("error"))
    if error is not None and parts == 0:
        return UsageReport(UsageStatus.ERROR, None, 0, 0, model, error)
    return UsageReport(UsageStatus.UNKNOWN, None, size, parts, model, error)
