"""Reader behaviours the cost cases do not pin down: edge rules of each wire format."""

from __future__ import annotations

import json
from typing import Any

from fairmeter.usage import anthropic_messages, openai_chat, openai_responses
from fairmeter.usage.model import Usage, UsageReport, UsageStatus


def j(value: Any) -> bytes:
    return json.dumps(value).encode()


def stream(mod: Any, events: list[Any], *, ended: bool = True) -> UsageReport:
    reader = mod.StreamReader()
    for event in events:
        reader.feed(event if isinstance(event, bytes) else j(event))
    report: UsageReport = reader.finish(ended=ended)
    return report


# ---------------------------------------------------------------- OpenAI chat


def test_chat_error_after_text_is_unknown_not_free() -> None:
    report = stream(
        openai_chat,
        [
            {"model": "gpt-4.1", "choices": [{"index": 0, "delta": {"content": "Hello"}}]},
            {"error": {"message": "boom", "type": "server_error", "code": None}},
        ],
    )
    assert report.status is UsageStatus.UNKNOWN
    assert report.error_type == "server_error"
    assert (report.delivered_text_bytes, report.delivered_chunks) == (5, 1)


def test_chat_usage_on_a_content_chunk_is_taken_and_garbage_usage_ignored() -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 3}
    report = stream(
        openai_chat,
        [
            {"choices": [{"index": 0, "delta": {"content": "ok"}}], "usage": {"foo": 1}},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage},
            b"[DONE]",
        ],
    )
    assert report.status is UsageStatus.COMPLETE
    assert report.usage == Usage(uncached_input_tokens=10, output_tokens=3)
    assert stream(openai_chat, [{"choices": [], "usage": {"foo": 1}}]).status is UsageStatus.UNKNOWN


def test_chat_details_larger_than_totals_are_clipped() -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 80, "cache_write_tokens": 50, "audio_tokens": 30},
        "completion_tokens_details": {"reasoning_tokens": 99, "audio_tokens": 99},
    }
    report = openai_chat.read_body(200, j({"choices": [], "usage": usage}))
    assert report.usage == Usage(
        uncached_input_tokens=0,
        cache_read_tokens=80,
        cache_write_other=(("30m", 20),),
        input_audio_tokens=0,
        output_tokens=10,
        reasoning_tokens=10,
        output_audio_tokens=10,
    )
    assert report.usage.input_tokens == 100


def test_chat_non_stream_200_error_body_and_unparsable_error() -> None:
    assert openai_chat.read_body(200, j({"error": {"type": "server_error"}})).status is UsageStatus.ERROR
    report = openai_chat.read_body(502, b"<html>Bad gateway</html>")
    assert (report.status, report.error_type) == (UsageStatus.ERROR, "http_502")


def test_chat_service_tier_and_cut_are_noted() -> None:
    report = stream(openai_chat, [{"model": "m", "service_tier": "flex", "choices": []}], ended=False)
    assert report.notes == ("service_tier=flex", "stream_cut")


# ---------------------------------------------------------------- OpenAI Responses


def resp_usage(**extra: Any) -> dict[str, Any]:
    return {"input_tokens": 100, "output_tokens": 20, **extra}


def test_responses_failed_without_usage_after_text_is_unknown() -> None:
    report = stream(
        openai_responses,
        [
            {"type": "response.output_text.delta", "delta": "abc"},
            {"type": "response.failed", "response": {"status": "failed", "usage": None, "error": {"code": "x"}}},
        ],
    )
    assert (report.status, report.error_type, report.delivered_text_bytes) == (UsageStatus.UNKNOWN, "x", 3)


def test_responses_incomplete_without_usage_is_unknown_and_error_event_is_error() -> None:
    incomplete = {"type": "response.incomplete", "response": {"status": "incomplete", "usage": None}}
    assert stream(openai_responses, [incomplete]).status is UsageStatus.UNKNOWN
    report = stream(openai_responses, [{"type": "error", "code": "rate_limit_exceeded", "message": "slow down"}])
    assert (report.status, report.error_type) == (UsageStatus.ERROR, "rate_limit_exceeded")


def test_responses_web_search_items_from_stream_when_final_output_omits_them() -> None:
    report = stream(
        openai_responses,
        [
            {"type": "response.output_item.done", "item": {"type": "web_search_call", "id": "ws_1"}},
            {"type": "response.output_item.done", "item": {"type": "web_search_call", "id": "ws_2"}},
            {"type": "response.completed", "response": {"output": [], "usage": resp_usage()}},
        ],
    )
    assert report.usage is not None and report.usage.web_search_requests == 2


def test_responses_ttl_split_is_clipped_to_the_total_and_rest_is_30m() -> None:
    details = {"cached_tokens": 0, "cache_write_tokens": 40, "cache_write_tokens_details": {"ttl_12h_tokens": 25}}
    body = {"status": "completed", "output": [], "usage": resp_usage(input_tokens_details=details)}
    usage = openai_responses.read_body(200, j(body)).usage
    assert usage is not None
    assert usage.cache_write_other == (("30m", 15), ("12h", 25))
    assert usage.uncached_input_tokens == 60
    details["cache_write_tokens_details"] = {"ttl_12h_tokens": 400, "ttl_30m_tokens": 0}
    usage = openai_responses.read_body(200, j(body)).usage
    assert usage is not None and usage.cache_write_other == (("12h", 40),)


def test_responses_events_after_terminal_are_ignored() -> None:
    report = stream(
        openai_responses,
        [
            {"type": "response.completed", "response": {"usage": resp_usage()}},
            {"type": "response.output_text.delta", "delta": "late"},
            {"type": "response.completed", "response": {"usage": resp_usage(output_tokens=999)}},
        ],
    )
    assert report.usage is not None and report.usage.output_tokens == 20
    assert report.delivered_text_bytes == 0


def test_responses_failed_body_without_usage_is_error() -> None:
    body = {"status": "failed", "error": {"code": "server_error"}, "output": [], "usage": None}
    report = openai_responses.read_body(200, j(body))
    assert (report.status, report.error_type) == (UsageStatus.ERROR, "server_error")


# ---------------------------------------------------------------- Anthropic


def start(**usage: Any) -> dict[str, Any]:
    return {"type": "message_start", "message": {"model": "claude-x", "usage": {"output_tokens": 1, **usage}}}


def test_anthropic_delta_cache_total_keeps_the_1h_split_from_start() -> None:
    report = stream(
        anthropic_messages,
        [
            start(
                input_tokens=10,
                cache_creation_input_tokens=1000,
                cache_creation={"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 1000},
            ),
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"cache_creation_input_tokens": 1500, "output_tokens": 9}},
        ],
    )  # fmt: skip
    assert report.status is UsageStatus.COMPLETE
    assert report.usage == Usage(
        uncached_input_tokens=10, cache_write_5m_tokens=500, cache_write_1h_tokens=1000, output_tokens=9
    )


def test_anthropic_delta_without_stop_reason_then_cut_is_partial() -> None:
    report = stream(
        anthropic_messages,
        [
            start(input_tokens=10),
            {"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": 7}},
        ],
        ended=False,
    )
    assert report.status is UsageStatus.PARTIAL
    assert report.usage is not None and report.usage.output_tokens == 7
    assert "stream_cut" in report.notes


def test_anthropic_message_stop_closes_and_later_events_are_ignored() -> None:
    report = stream(
        anthropic_messages,
        [
            start(input_tokens=10),
            {"type": "message_stop"},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 500}},
            {"type": "error", "error": {"type": "overloaded_error"}},
        ],
    )
    assert report.status is UsageStatus.COMPLETE and report.error_type is None
    assert report.usage is not None and report.usage.output_tokens == 1


def test_anthropic_nothing_at_all_is_unknown() -> None:
    assert stream(anthropic_messages, [], ended=False).status is UsageStatus.UNKNOWN
    assert stream(anthropic_messages, [{"type": "ping"}]).status is UsageStatus.UNKNOWN


def test_anthropic_200_error_body_and_1h_larger_than_total() -> None:
    report = anthropic_messages.read_body(200, j({"type": "error", "error": {"type": "api_error"}}))
    assert (report.status, report.error_type) == (UsageStatus.ERROR, "api_error")
    body = {
        "type": "message",
        "content": [{"type": "tool_use", "input": {"a": 1}}],
        "usage": {
            "input_tokens": 1,
            "output_tokens": 2,
            "cache_creation_input_tokens": 10,
            "cache_creation": {"ephemeral_1h_input_tokens": 50},
        },
    }
    report = anthropic_messages.read_body(200, j(body))
    assert report.usage == Usage(uncached_input_tokens=1, cache_write_1h_tokens=10, output_tokens=2)
    assert (report.delivered_text_bytes, report.delivered_chunks) == (len(b'{"a":1}'), 1)
