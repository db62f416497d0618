"""Anthropic Messages and count_tokens through the official SDK, and the raw event stream."""

from __future__ import annotations

import json

import anthropic
import pytest
from tests.testing.emulator_helpers import ANTHROPIC_AUTH, MESSAGES, raw

from fairmeter.testing import EmulatorServer

WORDS = "Hello from the fairmeter emulator. This is a short reply with"


def test_plain_message_usage_follows_the_formula(ant: anthropic.Anthropic) -> None:
    # "Say hello" (9 bytes) + system "You are terse." (14 bytes): ceil(23 / 4) + 1 * 4 + 3 = 13
    message = ant.messages.create(**MESSAGES, system="You are terse.")
    assert message.model == "claude-haiku-4-5"
    assert message.content[0].text == WORDS
    assert message.stop_reason == "end_turn"
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (13, 12)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)
    assert usage.cache_creation is not None
    assert (usage.cache_creation.ephemeral_5m_input_tokens, usage.cache_creation.ephemeral_1h_input_tokens) == (0, 0)
    assert usage.service_tier == "standard"
    assert usage.server_tool_use is None


def test_max_tokens_caps_output(ant: anthropic.Anthropic) -> None:
    message = ant.messages.create(**{**MESSAGES, "max_tokens": 2})
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 2


def test_server_tools_report_server_tool_use(ant: anthropic.Anthropic) -> None:
    tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]
    message = ant.messages.create(
        **MESSAGES, tools=tools, extra_headers={"x-emulator-usage": '{"server_tool_use": {"web_search_requests": 2}}'}
    )
    assert message.usage.server_tool_use is not None
    assert message.usage.server_tool_use.web_search_requests == 2
    assert message.usage.server_tool_use.web_fetch_requests == 0


def test_stream_helper_accumulates_the_message(ant: anthropic.Anthropic) -> None:
    with ant.messages.stream(**MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == WORDS
    assert final.usage.output_tokens == 12
    assert final.usage.input_tokens == 3 + 4 + 3
    assert final.stop_reason == "end_turn"


def test_create_stream_events_in_order(ant: anthropic.Anthropic) -> None:
    events = list(ant.messages.create(**MESSAGES, stream=True, extra_headers={"x-emulator-chunks": "2"}))
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # the SDK drops the ping
    start, delta = events[0], events[5]
    assert start.message.usage.output_tokens == 1
    assert start.message.usage.input_tokens == 10
    assert delta.usage.output_tokens == 2


def test_raw_stream_has_ping_and_named_events(emu: EmulatorServer) -> None:
    answer = raw(emu, "/v1/messages", {**MESSAGES, "stream": True}, ANTHROPIC_AUTH)
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["request-id"].startswith("req_")
    events = answer.events()
    assert events[2] == ("ping", '{"type":"ping"}')
    assert all(name == json.loads(data)["type"] for name, data in events)
    message_delta = json.loads(events[-2][1])
    assert message_delta["usage"] == {"output_tokens": 12}


def test_count_tokens(ant: anthropic.Anthropic) -> None:
    counted = ant.messages.count_tokens(
        model="claude-haiku-4-5", system="You are terse.", messages=[{"role": "user", "content": "Say hello"}]
    )
    assert counted.input_tokens == 13


def test_tool_result_text_is_counted(ant: anthropic.Anthropic) -> None:
    messages = [
        {"role": "user", "content": "abcd"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "efgh"}]}],
        },
    ]
    counted = ant.messages.count_tokens(model="claude-haiku-4-5", messages=messages)
    assert counted.input_tokens == 2 + 3 * 4 + 3


def test_overload_mid_stream_raises_with_the_error_body(ant: anthropic.Anthropic, emu: EmulatorServer) -> None:
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        for event in ant.messages.create(**MESSAGES, stream=True, extra_headers={"x-emulator-overload-after": "4"}):
            seen.append(event.type)
    assert seen == ["message_start", "content_block_start", "content_block_delta"]  # plus the ping
    assert caught.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}

    answer = raw(
        emu, "/v1/messages", {**MESSAGES, "stream": True}, {**ANTHROPIC_AUTH, "x-emulator-overload-after": "4"}
    )
    assert not answer.incomplete  # the stream itself ends normally
    assert [name for name, _ in answer.events()][-2:] == ["content_block_delta", "error"]


def test_overload_before_message_start(ant: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        list(ant.messages.create(**MESSAGES, stream=True, extra_headers={"x-emulator-overload-after": "0"}))
    assert caught.value.body["error"]["type"] == "overloaded_error"
