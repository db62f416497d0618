"""How many tokens the emulator says a request used, and the text it generates.

The formulas are deliberately simple and documented (docs/emulator.md), so tests can predict them:

- input tokens  = ceil(UTF-8 bytes of all message text, plus system/instructions, / 4) + 4 per message + 3
- output tokens = the number of content chunks generated (one token per chunk), capped by the request's limit

Every real BPE token is at least one byte, so these numbers always stay under the gateway's worst-case bound.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

DEFAULT_CHUNKS = 12
PER_MESSAGE = 4
PER_REQUEST = 3

# Short words, each one "token"; the leading space mimics how BPE tokens carry their separator.
_WORDS = (
    "Hello",
    " from",
    " the",
    " fairmeter",
    " emulator",
    ".",
    " This",
    " is",
    " a",
    " short",
    " reply",
    " with",
    " one",
    " token",
    " per",
    " chunk",
)


@functools.lru_cache(maxsize=64)
def words(count: int) -> tuple[str, ...]:
    """`count` deterministic text pieces, one per output token (cached: the same few counts recur)."""
    return tuple(_WORDS[i % len(_WORDS)] for i in range(count))


def _collect_text(content: Any, out: list[str]) -> None:
    """Append every piece of text in a message's content (a string or a list of typed parts, nested)."""
    if isinstance(content, str):
        out.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, Mapping):
                text = part.get("text")
                if isinstance(text, str):
                    out.append(text)
                # tool_result blocks (Anthropic) and nested items carry their text one level down
                nested = part.get("content")
                if nested is not None:
                    _collect_text(nested, out)


def input_tokens(messages: Iterable[Any], system: Any = None) -> int:
    """Prompt tokens for a list of messages plus an optional top-level system prompt / instructions.

    A top-level system prompt adds its bytes but is not a message (no per-message overhead).
    """
    texts: list[str] = []
    count = 0
    for message in messages:
        count += 1
        if isinstance(message, Mapping):
            _collect_text(message.get("content"), texts)
        else:
            _collect_text(message, texts)
    if system is not None:
        _collect_text(system, texts)
    size = sum(len(t.encode("utf-8")) for t in texts)
    return -(-size // 4) + PER_MESSAGE * count + PER_REQUEST


def output_chunks(requested: int | None, limit: Any) -> tuple[int, bool]:
    """Chunks to generate and whether the request's own output limit cut them short."""
    chunks = DEFAULT_CHUNKS if requested is None else requested
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < chunks:
        return limit, True
    return chunks, False


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `override` merged in, recursing into nested objects."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def with_override(
    usage: dict[str, Any], override: Mapping[str, Any] | None, total_of: tuple[str, str] | None
) -> dict[str, Any]:
    """`usage` with the `x-emulator-usage` override merged in.

    `total_tokens` is re-derived from the two `total_of` fields unless the override sets it, so an override of
    one count still yields a self-consistent usage object.
    """
    if not override:
        return usage
    merged = deep_merge(usage, override)
    if total_of is not None and "total_tokens" not in override:
        first, second = merged.get(total_of[0]), merged.get(total_of[1])
        if isinstance(first, int) and isinstance(second, int):
            merged["total_tokens"] = first + second
    return merged
