"""Reader properties: prefixes of real streams never over-count, and no input makes a reader raise."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.usage.cost_cases import STREAM_CASES, counts, module, payloads, read_case, read_events, sse_bytes

from fairmeter.usage import anthropic_messages, openai_chat, openai_responses
from fairmeter.usage.model import UsageReport, UsageStatus
from fairmeter.usage.sse import SSESplitter

MODULES = (openai_chat, openai_responses, anthropic_messages)


def assert_not_above(prefix: UsageReport, full: UsageReport) -> None:
    whole = counts(full)
    for key, n in counts(prefix).items():
        assert n <= whole.get(key, 0), (key, n, whole.get(key, 0))


def test_every_event_prefix_never_over_counts() -> None:
    for case in STREAM_CASES:
        full = read_case(case)
        events = payloads(case)
        for k in range(len(events) + 1):
            for ended in (True, False):
                assert_not_above(read_events(case, events[:k], ended=ended), full)


@settings(max_examples=300)
@given(data=st.data())
def test_byte_prefix_through_splitter_never_over_counts(data: st.DataObject) -> None:
    case = data.draw(st.sampled_from(STREAM_CASES))
    newline = data.draw(st.sampled_from([b"\n", b"\r\n"]))
    raw = sse_bytes(case, newline)
    cut = data.draw(st.integers(0, len(raw)))
    splitter = SSESplitter()
    reader = module(case).StreamReader()
    for event in [*splitter.feed(raw[:cut]), *splitter.flush()]:
        reader.feed(event.data)
    assert_not_above(reader.finish(ended=False), read_case(case))


# JSON shaped like the real events, with wrong types and values in the places the readers look.
KEYS = [
    "type", "usage", "choices", "delta", "message", "response", "content", "error", "model", "output",
    "prompt_tokens", "completion_tokens", "input_tokens", "output_tokens", "prompt_tokens_details",
    "completion_tokens_details", "input_tokens_details", "output_tokens_details", "cached_tokens",
    "cache_write_tokens", "cache_write_tokens_details", "ttl_30m_tokens", "ttl_12h_tokens", "audio_tokens",
    "reasoning_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation",
    "ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens", "server_tool_use", "web_search_requests",
    "output_tokens_details", "thinking_tokens", "stop_reason", "text", "thinking", "partial_json", "tool_calls",
    "function", "arguments", "name", "refusal", "audio", "transcript", "item", "status", "code", "service_tier",
    "content_block", "summary", "input", "incomplete_details", "reason",
]  # fmt: skip
TYPES = [
    "message_start", "message_delta", "message_stop", "content_block_delta", "content_block_start", "error",
    "text_delta", "thinking_delta", "input_json_delta", "response.completed", "response.failed",
    "response.incomplete", "response.output_text.delta", "response.output_item.done", "web_search_call",
    "tool_use", "message", "failed", "ping",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.sampled_from(TYPES),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=6),
    ),
    max_leaves=30,
)


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


@settings(max_examples=500)
@given(events=st.lists(json_values, max_size=8), ended=st.booleans())
def test_stream_readers_never_raise_on_json_garbage(events: list[Any], ended: bool) -> None:
    for mod in MODULES:
        reader = mod.StreamReader()
        for value in events:
            reader.feed(encode(value))
        report = reader.finish(ended=ended)
        assert isinstance(report.status, UsageStatus)
        if report.usage is not None:
            assert min(counts(report).values()) >= 0


@settings(max_examples=300)
@given(events=st.lists(st.binary(max_size=64), max_size=8), status=st.integers(0, 999), body=st.binary(max_size=200))
def test_readers_never_raise_on_arbitrary_bytes(events: list[bytes], status: int, body: bytes) -> None:
    for mod in MODULES:
        reader = mod.StreamReader()
        for data in events:
            reader.feed(data)
        reader.finish(ended=False)
        mod.read_body(status, body)


@settings(max_examples=300)
@given(value=json_values, status=st.sampled_from([200, 201, 400, 429, 500, 529]))
def test_body_readers_never_raise_on_json_garbage(value: Any, status: int) -> None:
    for mod in MODULES:
        report = mod.read_body(status, encode(value))
        if not 200 <= status < 300:
            assert report.status is UsageStatus.ERROR and report.usage is None
