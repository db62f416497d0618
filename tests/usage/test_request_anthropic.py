"""Anthropic Messages request reading: validation errors and bound rules."""

from __future__ import annotations

from typing import Any

import pytest

from fairmeter.errors import InvalidRequest
from fairmeter.usage.request import (
    ANTHROPIC_IMAGE_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    PART_OVERHEAD_TOKENS,
    PROVIDER_TOOL_TOKENS,
    REQUEST_OVERHEAD_TOKENS,
    SCHEMA_OVERHEAD_TOKENS,
    TOOL_OVERHEAD_TOKENS,
    TOOLS_PROMPT_TOKENS,
    json_len,
)
from fairmeter.usage.request_anthropic import parse_count_tokens, parse_messages

WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search"}


def msgs(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "hello"}],
    }
    body.update(fields)
    return body


def user(*blocks: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(blocks)}]


@pytest.mark.parametrize(
    ("body", "words", "param"),
    [
        (3, ["JSON object", "3"], None),
        ({"max_tokens": 10, "messages": []}, ["model is required"], "model"),
        (msgs(model=None), ["model is required"], "model"),
        (msgs(model="  "), ["model", '"  "'], "model"),
        ({"model": "claude", "messages": []}, ["max_tokens is required"], "max_tokens"),
        (msgs(max_tokens="1024"), ["max_tokens", "integer", '"1024"'], "max_tokens"),
        (msgs(max_tokens=True), ["max_tokens", "true"], "max_tokens"),
        (msgs(max_tokens=0), ["max_tokens", "at least 1", "0"], "max_tokens"),
        (msgs(max_tokens=64_000_000), ["10,000,000", "64,000,000"], "max_tokens"),
        ({"model": "claude", "max_tokens": 5}, ["messages is required"], "messages"),
        (msgs(messages={"role": "user"}), ["messages must be a list", "role"], "messages"),
        (msgs(messages=["hi"]), ["messages[0]", '"hi"'], "messages[0]"),
        (msgs(messages=[{"content": "x"}]), ["messages[0].role", "null"], "messages[0].role"),
        (msgs(messages=[{"role": "user"}]), ["messages[0].content", "null"], "messages[0].content"),
        (msgs(messages=[{"role": "user", "content": 9}]), ["messages[0].content", "9"], "messages[0].content"),
        (msgs(messages=user({"text": "x"})), ["messages[0].content[0].type"], "messages[0].content[0].type"),
        (
            msgs(messages=user({"type": "text", "text": ["x"]})),
            ["messages[0].content[0].text", '["x"]'],
            "messages[0].content[0].text",
        ),
        (
            msgs(messages=user({"type": "image", "source": {"type": "ftp"}})),
            ["messages[0].content[0].source", "ftp"],
            "messages[0].content[0]",
        ),
        (msgs(stream="true"), ["stream", '"true"'], "stream"),
        (msgs(system=5), ["system must be a string or a list", "5"], "system"),
        (msgs(system=["be brief"]), ["system[0]", '"be brief"'], "system[0]"),
        (msgs(tools={"name": "x"}), ["tools must be a list"], "tools"),
        (msgs(tools=[7]), ["tools[0]", "7"], "tools[0]"),
        (msgs(tools=[{**WEB_SEARCH, "max_uses": "5"}]), ["tools[0].max_uses", '"5"'], "tools[0].max_uses"),
        (msgs(tools=[{**WEB_SEARCH, "max_uses": 0}]), ["tools[0].max_uses", "0"], "tools[0].max_uses"),
        (
            msgs(thinking={"type": "enabled", "budget_tokens": "lots"}),
            ["thinking.budget_tokens", '"lots"'],
            "thinking.budget_tokens",
        ),
        (msgs(thinking="on"), ["thinking must be an object", '"on"'], "thinking"),
        (msgs(output_config=[]), ["output_config must be an object"], "output_config"),
    ],
)
def test_messages_rejects_malformed_requests_with_a_clear_sentence(body: object, words: list[str], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_messages(body)
    for word in words:
        assert word in caught.value.message
    assert caught.value.param == param


def test_count_tokens_validates_the_same_shape_without_max_tokens() -> None:
    assert parse_count_tokens({"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]}) == (
        "claude-haiku-4-5"
    )
    with pytest.raises(InvalidRequest, match="model"):
        parse_count_tokens({"messages": []})
    with pytest.raises(InvalidRequest, match="messages"):
        parse_count_tokens({"model": "claude", "messages": "hi"})
    with pytest.raises(InvalidRequest, match="max_tokens"):
        parse_count_tokens({"model": "claude", "messages": [], "max_tokens": -1})


def test_messages_reads_the_basics() -> None:
    parsed = parse_messages(msgs(stream=True, unknown_new_field=None))
    assert (parsed.model, parsed.stream, parsed.n, parsed.output_limit, parsed.include_usage) == (
        "claude-sonnet-4-5",
        True,
        1,
        1024,
        False,
    )
    assert parsed.unbounded_reason is None
    assert parsed.max_web_searches == 0


def test_messages_text_system_and_tool_round_trip_count() -> None:
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"city": "Zürich"}}
    messages = [
        {"role": "user", "content": "wie ist das Wetter?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Ich prüfe."}, tool_use]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "☀"}]}],
        },
    ]
    parsed = parse_messages(msgs(system=[{"type": "text", "text": "be brief"}], messages=messages))
    expected = (
        REQUEST_OVERHEAD_TOKENS
        + MESSAGE_OVERHEAD_TOKENS + PART_OVERHEAD_TOKENS + len("be brief")
        + MESSAGE_OVERHEAD_TOKENS + len("user") + len("wie ist das Wetter?")
        + MESSAGE_OVERHEAD_TOKENS + len("assistant") + 2 * PART_OVERHEAD_TOKENS + len("Ich prüfe.".encode())
        + json_len(tool_use)
        + MESSAGE_OVERHEAD_TOKENS + len("user") + 2 * PART_OVERHEAD_TOKENS + len("toolu_1") + len("☀".encode())
    )  # fmt: skip
    assert parsed.input_tokens_bound == expected
    assert parsed.prompt_text_bytes == len("be briefwie ist das Wetter?Ich prüfe.☀".encode())


def test_messages_string_system_counts() -> None:
    base = parse_messages(msgs())
    parsed = parse_messages(msgs(system="Sei kurz."))
    assert parsed.input_tokens_bound == base.input_tokens_bound + MESSAGE_OVERHEAD_TOKENS + len("Sei kurz.")


def test_messages_image_ceiling_whatever_the_source() -> None:
    base = parse_messages(msgs(messages=user({"type": "text", "text": "?"})))
    for source in (
        {"type": "base64", "media_type": "image/png", "data": "iVBOR" * 100_000},
        {"type": "url", "url": "https://example.com/x.png"},
    ):
        parsed = parse_messages(msgs(messages=user({"type": "text", "text": "?"}, {"type": "image", "source": source})))
        assert parsed.input_tokens_bound == base.input_tokens_bound + PART_OVERHEAD_TOKENS + ANTHROPIC_IMAGE_TOKENS
        assert parsed.prompt_text_bytes == base.prompt_text_bytes
    assert ANTHROPIC_IMAGE_TOKENS >= 10_000


def test_messages_tools_schemas_and_hidden_prompts() -> None:
    custom = {"name": "get", "description": "weather", "input_schema": {"type": "object"}}
    bash = {"type": "bash_20250124", "name": "bash"}
    schema = {"type": "json_schema", "schema": {"type": "object"}}
    base = parse_messages(msgs())
    parsed = parse_messages(
        msgs(tools=[custom, bash], tool_choice={"type": "auto"}, output_config={"format": schema, "effort": "low"})
    )
    extra = (
        TOOLS_PROMPT_TOKENS
        + json_len(custom) + TOOL_OVERHEAD_TOKENS
        + json_len(bash) + PROVIDER_TOOL_TOKENS
        + json_len({"type": "auto"})
        + json_len(schema) + SCHEMA_OVERHEAD_TOKENS
    )  # fmt: skip
    assert parsed.input_tokens_bound == base.input_tokens_bound + extra
    assert parsed.unbounded_reason is None


def test_messages_thinking_budget_above_max_tokens_raises_the_output_limit() -> None:
    assert parse_messages(msgs(thinking={"type": "enabled", "budget_tokens": 500})).output_limit == 1024
    assert parse_messages(msgs(thinking={"type": "enabled", "budget_tokens": 5000})).output_limit == 5000
    assert parse_messages(msgs(thinking={"type": "adaptive"})).output_limit == 1024


def test_messages_web_search_uses() -> None:
    limited = parse_messages(msgs(tools=[{**WEB_SEARCH, "max_uses": 5}]))
    assert limited.max_web_searches == 5
    assert limited.bound(64_000).max_web_searches == 5
    two = parse_messages(msgs(tools=[{**WEB_SEARCH, "max_uses": 5}, {**WEB_SEARCH, "max_uses": 2}]))
    assert two.max_web_searches == 7
    unlimited = parse_messages(msgs(tools=[WEB_SEARCH, {**WEB_SEARCH, "max_uses": 2}]))
    assert unlimited.max_web_searches is None
    assert unlimited.bound(64_000).max_web_searches == 1024  # bounded by max_tokens
    newer = parse_messages(msgs(tools=[{"type": "web_search_20260209", "name": "web_search", "max_uses": 3}]))
    assert newer.max_web_searches == 3


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ({"messages": user({"type": "document", "source": {"type": "base64", "data": "JVBE"}})}, "document"),
        ({"messages": user({"type": "image", "source": {"type": "file", "file_id": "file_1"}})}, "stored file"),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"}]}]},
            "thinking",
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "redacted_thinking", "data": "x"}]}]},
            "redacted_thinking",
        ),
        ({"messages": user({"type": "container_upload", "file_id": "f"})}, "stored file"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "web_search_tool_result", "tool_use_id": "s", "content": []}],
                    }
                ]
            },
            "encrypted",
        ),
        (
            {
                "messages": user(
                    {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document", "source": {}}]}
                )
            },
            "document",
        ),
        ({"messages": user({"type": "hologram"})}, '"hologram"'),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [
                            {
                                "type": "code_execution_tool_result",
                                "tool_use_id": "t",
                                "content": {"type": "x", "content": [{"file_id": "f"}]},
                            }
                        ],
                    }
                ]
            },
            "stored file",
        ),
        ({"tools": [WEB_SEARCH]}, "search results"),
        ({"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}, "web_fetch"),
        ({"tools": [{"type": "code_execution_20250825", "name": "code_execution"}]}, "code_execution"),
        ({"container": "container_1"}, "container"),
        ({"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}, "mcp_servers"),
        ({"context_management": {"edits": [{"type": "compact_20260112"}]}}, "compaction"),
    ],
)
def test_messages_marks_input_it_cannot_see_as_unbounded(fields: dict[str, Any], phrase: str) -> None:
    parsed = parse_messages(msgs(**fields))
    assert parsed.unbounded_reason is not None
    assert phrase in parsed.unbounded_reason


def test_messages_clearing_context_edits_stay_bounded() -> None:
    parsed = parse_messages(msgs(context_management={"edits": [{"type": "clear_tool_uses_20250919"}]}))
    assert parsed.unbounded_reason is None


def test_messages_speed_and_service_tier() -> None:
    assert parse_messages(msgs(speed="fast")).service_tier == "fast"
    assert parse_messages(msgs(service_tier="standard_only")).service_tier == "standard_only"
    assert parse_messages(msgs()).service_tier is None


def test_tool_use_arguments_named_file_id_are_just_json() -> None:
    tool_use = {"type": "tool_use", "id": "t", "name": "read", "input": {"file_id": "report.txt"}}
    parsed = parse_messages(msgs(messages=[{"role": "assistant", "content": [tool_use]}]))
    assert parsed.unbounded_reason is None
