"""The shared usage record every provider module reads into."""

from __future__ import annotations

from dataclasses import field
from enum import StrEnum

from fairmeter.record import record


class UsageStatus(StrEnum):
    """How much of a call's usage the provider reported.

    * ``complete``: the provider's final usage was seen.
    * ``partial``: the stream ended early after cumulative usage was seen; numbers are a lower bound.
    * ``unknown``: no usage at all (e.g. an OpenAI stream cut before its usage chunk).
    * ``error``: the upstream refused or failed before any usage; the call costs 0.
    """

    COMPLETE = "complete"
    PARTIAL = "partial"
    UNKNOWN = "unknown"
    ERROR = "error"


@record
class Usage:
    """Token counts by billing class.

    ``uncached_input_tokens`` are billed at the base input rate and include ``input_audio_tokens``
    (billed at the audio rate when one is set). ``output_tokens`` is all billed output and includes
    ``reasoning_tokens`` and ``output_audio_tokens``. Cache writes are split by TTL: ``5m``/``1h``
    and, for other TTLs, ``cache_write_other`` as ``(ttl, tokens)`` pairs.
    """

    uncached_input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_write_other: tuple[tuple[str, int], ...] = ()
    input_audio_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    output_audio_tokens: int = 0
    web_search_requests: int = 0

    @property
    def cache_write_tokens(self) -> int:
        """All cache-write tokens, every TTL."""
        total = self.cache_write_5m_tokens + self.cache_write_1h_tokens
        for _, n in self.cache_write_other:  # a loop: usually empty, and read several times per call
            total += n
        return total

    @property
    def input_tokens(self) -> int:
        """Total input tokens: uncached + cache read + cache write."""
        return self.uncached_input_tokens + self.cache_read_tokens + self.cache_write_tokens


@record
class UsageReport:
    """What a provider module learned from one response (body or stream).

    ``usage`` is the provider's own report (None when ``status`` is unknown or error).
    ``delivered_text_bytes`` and ``delivered_chunks`` describe what reached the client; they feed
    the estimate for partial and unknown calls (see `fairmeter.pricing.estimate`).
    """

    status: UsageStatus
    usage: Usage | None = None
    delivered_text_bytes: int = 0
    delivered_chunks: int = 0
    response_model: str | None = None
    error_type: str | None = None
    notes: tuple[str, ...] = field(default=())


@record
class RequestBound:
    """Upper bounds read from a request before it is forwarded (see docs/bounds.md)."""

    max_input_tokens: int
    max_output_tokens: int
    max_web_searches: int = 0
    prompt_text_bytes: int = 0  # UTF-8 bytes of the visible prompt text, for estimates
