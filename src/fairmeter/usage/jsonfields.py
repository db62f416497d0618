"""Tolerant readers of JSON fields, shared by the provider modules (never raise on any input)."""

from __future__ import annotations

from typing import Any

import orjson


def load_object(data: bytes) -> dict[str, Any] | None:
    """The JSON object in ``data``, or None for anything else (never raises)."""
    try:
        value = orjson.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def count(obj: object, key: str) -> int:
    """A non-negative integer field of a JSON object; 0 when missing or malformed."""
    if isinstance(obj, dict):
        value = obj.get(key)
        if type(value) is int and value > 0:
            return value
    return 0


def text_bytes(value: object) -> int:
    """UTF-8 size of a JSON string value; 0 for anything else."""
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    return 0


def has_count(obj: dict[str, Any], *keys: str) -> bool:
    """Whether at least one of ``keys`` holds an integer (a usage object, not garbage)."""
    return any(type(obj.get(k)) is int for k in keys)
