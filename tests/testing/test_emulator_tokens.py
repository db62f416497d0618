"""The token formulas the gateway's worst-case bound relies on."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from fairmeter.testing.tokens import deep_merge, input_tokens, output_chunks, with_override, words


@given(st.lists(st.text(), max_size=8), st.none() | st.text())
def test_input_tokens_formula(texts: list[str], system: str | None) -> None:
    messages = [{"role": "user", "content": t} for t in texts]
    size = sum(len(t.encode()) for t in texts) + (len(system.encode()) if system is not None else 0)
    assert input_tokens(messages, system) == math.ceil(size / 4) + 4 * len(texts) + 3


@given(st.lists(st.text(), max_size=8))
def test_input_tokens_never_exceed_one_per_byte_plus_framing(texts: list[str]) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": t}]} for t in texts]
    assert input_tokens(messages) <= sum(len(t.encode()) for t in texts) + 4 * len(texts) + 3


@given(st.none() | st.integers(0, 500), st.none() | st.integers(0, 500))
def test_output_chunks_never_exceed_the_limit(requested: int | None, limit: int | None) -> None:
    chunks, truncated = output_chunks(requested, limit)
    wanted = 12 if requested is None else requested
    assert chunks == (wanted if limit is None else min(wanted, limit))
    assert truncated == (limit is not None and limit < wanted)
    assert len(words(chunks)) == chunks


def test_deep_merge_keeps_siblings() -> None:
    base = {"a": 1, "d": {"x": 1, "y": 2}}
    assert deep_merge(base, {"d": {"y": 5}, "e": 3}) == {"a": 1, "d": {"x": 1, "y": 5}, "e": 3}
    assert base == {"a": 1, "d": {"x": 1, "y": 2}}


def test_override_rederives_total_unless_given() -> None:
    usage = {"input_tokens": 10, "output_tokens": 2, "total_tokens": 12}
    assert with_override(usage, {"input_tokens": 100}, ("input_tokens", "output_tokens"))["total_tokens"] == 102
    assert with_override(usage, {"total_tokens": 7}, ("input_tokens", "output_tokens"))["total_tokens"] == 7
