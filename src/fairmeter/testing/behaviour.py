"""Per-request behaviour, chosen by the `x-emulator-*` request headers (the gateway forwards them unchanged)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from fairmeter.record import record


class BehaviourError(ValueError):
    """An `x-emulator-*` header whose value cannot be understood."""


@record
class Behaviour:
    """What one request asks the emulator to do besides answering normally."""

    latency_s: float = 0.0  # float-ok: seconds
    chunk_delay_s: float = 0.0  # float-ok: seconds
    chunks: int | None = None
    error: int | None = None
    overload_after: int | None = None
    cut_after: int | None = None
    reset: bool = False
    usage: Mapping[str, Any] | None = None
    scenario: str | None = None
    tag: str | None = None


NORMAL = Behaviour()


def _count(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise BehaviourError(f"{name} must be a non-negative integer, got {raw!r}") from None
    if value < 0:
        raise BehaviourError(f"{name} must be a non-negative integer, got {raw!r}")
    return value


def parse_behaviour(headers: Mapping[str, str]) -> Behaviour:
    """Read the control headers of one request (lower-cased names); raises `BehaviourError` on a bad value."""
    if not any(name.startswith("x-emulator-") for name in headers):
        return NORMAL
    usage: Mapping[str, Any] | None = None
    raw_usage = headers.get("x-emulator-usage")
    if raw_usage is not None:
        try:
            parsed = orjson.loads(raw_usage)
        except orjson.JSONDecodeError:
            raise BehaviourError(f"x-emulator-usage must be a JSON object, got {raw_usage!r}") from None
        if not isinstance(parsed, dict):
            raise BehaviourError(f"x-emulator-usage must be a JSON object, got {raw_usage!r}")
        usage = parsed
    latency = _count(headers, "x-emulator-latency-ms") or 0
    delay = _count(headers, "x-emulator-chunk-delay-ms") or 0
    return Behaviour(
        latency_s=latency / 1000,
        chunk_delay_s=delay / 1000,
        chunks=_count(headers, "x-emulator-chunks"),
        error=_count(headers, "x-emulator-error"),
        overload_after=_count(headers, "x-emulator-overload-after"),
        cut_after=_count(headers, "x-emulator-cut-after"),
        reset=headers.get("x-emulator-reset", "").strip() not in ("", "0", "false"),
        usage=usage,
        scenario=headers.get("x-emulator-scenario"),
        tag=headers.get("x-emulator-tag"),
    )
