"""OpenAI request reading: validation errors and bound rules (chat completions and Responses)."""

from __future__ import annotations

from typing import Any

import pytest

from fairmeter.errors import InvalidRequest
from fairmeter.usage.request import (
    MESSAGE_OVERHEAD_TOKENS,
    OPENAI_IMAGE_TOKENS,
    PART_OVERHEAD_TOKENS,
    PROVIDER_TOOL_TOKENS,
    REQUEST_OVERHEAD_TOKENS,
    SCHEMA_OVERHEAD_TOKENS,
    TOOL_OVERHEAD_TOKENS,
    TOOLS_PROMPT_TOKENS,
    json_len,
)
from fairmeter.usage.request_openai import parse_chat, parse_responses


def chat(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
    body.update(fields)
    return body


def responses(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-5", "input": "hello"}
    body.update(fields)
    return body


# ---------------------------------------------------------------- chat: validation


@pytest.mark.parametrize(
    ("body", "words", "param"),
    [
        ([1, 2], ["JSON object", "[1, 2]"], None),
        ("hi", ["JSON object", '"hi"'], None),
        ({"messages": [{"role": "user", "content": "x"}]}, ["model is required"], "model"),
        (chat(model=""), ["model", '""'], "model"),
        (chat(model=7), ["model", "7"], "model"),
        ({"model": "gpt-4o"}, ["messages is required"], "messages"),
        (chat(messages=[]), ["non-empty list", "[]"], "messages"),
        (chat(messages="hello"), ["messages", '"hello"'], "messages"),
        (chat(messages=[3]), ["messages[0]", "object", "3"], "messages[0]"),
        (chat(messages=[{"content": "x"}]), ["messages[0].role", "null"], "messages[0].role"),
        (chat(messages=[{"role": 1, "content": "x"}]), ["messages[0].role", "1"], "messages[0].role"),
        (chat(messages=[{"role": "user", "content": 5}]), ["messages[0].content", "5"], "messages[0].content"),
        (
            chat(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]),
            ["messages[0].content[0].text", "5"],
            "messages[0].content[0].text",
        ),
        (
            chat(messages=[{"role": "user", "content": [{"text": "x"}]}]),
            ["messages[0].content[0].type"],
            "messages[0].content[0].type",
        ),
        (chat(stream="yes"), ["stream", "true or false", '"yes"'], "stream"),
        (chat(stream=1), ["stream", "1"], "stream"),
        (chat(stream_options=True), ["stream_options", "object", "true"], "stream_options"),
        (
            chat(stream_options={"include_usage": "yes"}),
            ["stream_options.include_usage", '"yes"'],
            "stream_options.include_usage",
        ),
        (chat(max_completion_tokens="100"), ["max_completion_tokens", "integer", '"100"'], "max_completion_tokens"),
        (chat(max_completion_tokens=True), ["max_completion_tokens", "integer", "true"], "max_completion_tokens"),
        (chat(max_completion_tokens=1.5), ["max_completion_tokens", "1.5"], "max_completion_tokens"),
        (chat(max_completion_tokens=0), ["max_completion_tokens", "at least 1", "0"], "max_completion_tokens"),
        (chat(max_tokens=-5), ["max_tokens", "-5"], "max_tokens"),
        (chat(max_tokens=20_000_000), ["max_tokens", "10,000,000", "20,000,000"], "max_tokens"),
        (chat(n=0), ["n must be at least 1", "0"], "n"),
        (chat(n=129), ["n must be at most 128", "129"], "n"),
        (chat(n="2"), ["n must be an integer", '"2"'], "n"),
        (chat(n=False), ["n must be an integer", "false"], "n"),
        (chat(tools={"type": "function"}), ["tools must be a list"], "tools"),
        (chat(tools=["x"]), ["tools[0]", '"x"'], "tools[0]"),
        (chat(functions=3), ["functions must be a list", "3"], "functions"),
        (chat(response_format="json"), ["response_format", '"json"'], "response_format"),
        (chat(prediction={"content": 3}), ["prediction.content", "3"], "prediction.content"),
        (
            chat(messages=[{"role": "assistant", "content": None, "tool_calls": "call"}]),
            ["messages[0].tool_calls", '"call"'],
            "messages[0].tool_calls",
        ),
    ],
)
def test_chat_rejects_malformed_requests_with_a_clear_sentence(body: object, words: list[str], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_chat(body)
    for word in words:
        assert word in caught.value.message
    assert caught.value.param == param
    assert caught.value.status == 400
    assert caught.value.code == "invalid_request"


def test_chat_accepts_unknown_fields_and_nulls() -> None:
    parsed = parse_chat(chat(stream=None, n=None, max_tokens=None, brand_new_flag={"a": 1}))
    assert parsed.stream is False
    assert parsed.n == 1
    assert parsed.output_limit is None


def test_chat_reads_model_stream_n_and_usage_flag() -> None:
    parsed = parse_chat(chat(stream=True, stream_options={"include_usage": True}, n=3, max_completion_tokens=50))
    assert (parsed.model, parsed.stream, parsed.include_usage, parsed.n, parsed.output_limit) == (
        "gpt-4o",
        True,
        True,
        3,
        50,
    )
    assert parse_chat(chat(stream=True)).include_usage is False
    assert parse_chat(chat(stream=True, stream_options={"include_usage": False})).include_usage is False


def test_chat_takes_the_larger_of_both_output_limits() -> None:
    assert parse_chat(chat(max_completion_tokens=100, max_tokens=300)).output_limit == 300
    assert parse_chat(chat(max_completion_tokens=500, max_tokens=300)).output_limit == 500
    assert parse_chat(chat(max_tokens=42)).output_limit == 42


# ---------------------------------------------------------------- chat: bounds


def test_chat_text_counts_utf8_bytes_plus_framing() -> None:
    text = "héllo wörld ✓ 🎉"
    parsed = parse_chat(chat(messages=[{"role": "user", "content": text}]))
    assert parsed.prompt_text_bytes == len(text.encode())
    assert parsed.input_tokens_bound == REQUEST_OVERHEAD_TOKENS + MESSAGE_OVERHEAD_TOKENS + len("user") + len(
        text.encode()
    )
    assert parsed.unbounded_reason is None
    assert parsed.max_web_searches == 0


def test_chat_parts_names_tool_calls_and_tool_results_all_count() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"city":"Paris"}'}}
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}], "name": "sys"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
    ]
    parsed = parse_chat(chat(messages=messages))
    expected = (
        REQUEST_OVERHEAD_TOKENS
        + 4 * MESSAGE_OVERHEAD_TOKENS
        + len("system" "sys" "be brief") + PART_OVERHEAD_TOKENS
        + len("assistant") + json_len(call) + PART_OVERHEAD_TOKENS
        + len("tool" "call_1" "sunny")
        + len("assistant" "no") + PART_OVERHEAD_TOKENS
    )  # fmt: skip
    assert parsed.input_tokens_bound == expected
    assert parsed.prompt_text_bytes == len("be briefsunnyno")


def test_chat_image_is_a_fixed_ceiling_and_its_base64_is_not_text() -> None:
    small = parse_chat(chat(messages=[{"role": "user", "content": [{"type": "text", "text": "what?"}]}]))
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 500_000, "detail": "high"}}
    parsed = parse_chat(chat(messages=[{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}]))
    assert parsed.input_tokens_bound - small.input_tokens_bound == OPENAI_IMAGE_TOKENS + PART_OVERHEAD_TOKENS
    assert parsed.prompt_text_bytes == small.prompt_text_bytes
    assert OPENAI_IMAGE_TOKENS >= 10_000


def test_chat_audio_counts_its_base64_length() -> None:
    data = "UklGR" * 1000
    part = {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
    parsed = parse_chat(chat(messages=[{"role": "user", "content": [part]}]))
    base = REQUEST_OVERHEAD_TOKENS + MESSAGE_OVERHEAD_TOKENS + len("user") + PART_OVERHEAD_TOKENS
    assert parsed.input_tokens_bound == base + len(data)
    with pytest.raises(InvalidRequest, match=r"input_audio\.data"):
        parse_chat(chat(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]))


def test_chat_tools_schemas_and_choices_count_their_json() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}
    base = parse_chat(chat())
    parsed = parse_chat(chat(tools=[tool], tool_choice="auto", response_format=schema))
    extra = (
        TOOLS_PROMPT_TOKENS + json_len(tool) + TOOL_OVERHEAD_TOKENS + json_len("auto")
        + json_len(schema) + SCHEMA_OVERHEAD_TOKENS
    )  # fmt: skip
    assert parsed.input_tokens_bound == base.input_tokens_bound + extra
    assert parsed.prompt_text_bytes == base.prompt_text_bytes  # schemas are not visible text


def test_chat_legacy_functions_count_like_tools() -> None:
    function = {"name": "f", "description": "does things", "parameters": {"type": "object"}}
    base = parse_chat(chat())
    parsed = parse_chat(chat(functions=[function], function_call={"name": "f"}))
    extra = TOOLS_PROMPT_TOKENS + json_len(function) + TOOL_OVERHEAD_TOKENS + json_len({"name": "f"})
    assert parsed.input_tokens_bound == base.input_tokens_bound + extra


def test_chat_unknown_top_level_fields_count_their_json() -> None:
    base = parse_chat(chat())
    parsed = parse_chat(chat(new_context={"notes": "text the model might see"}))
    assert parsed.input_tokens_bound == base.input_tokens_bound + len("new_context") + json_len(
        {"notes": "text the model might see"}
    )


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f1"}}]}]}, "file"),
        ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_data": "JVBE"}}]}]}, "file"),
        ({"messages": [{"role": "assistant", "audio": {"id": "audio_1"}}]}, "audio"),
        ({"messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]}, '"video"'),
        ({"tools": [{"type": "retrieval"}]}, '"retrieval"'),
        ({"web_search_options": {}}, "web_search_options"),
    ],
)
def test_chat_marks_input_it_cannot_see_as_unbounded(fields: dict[str, Any], phrase: str) -> None:
    parsed = parse_chat(chat(**fields))
    assert parsed.unbounded_reason is not None
    assert phrase in parsed.unbounded_reason


def test_chat_web_search_options_has_no_use_limit() -> None:
    parsed = parse_chat(chat(web_search_options={}, max_completion_tokens=100, n=2))
    assert parsed.max_web_searches is None
    assert parsed.bound(4096).max_web_searches == 200  # bounded by the output bound


def test_chat_prediction_adds_its_bytes_to_the_output_bound() -> None:
    parsed = parse_chat(chat(prediction={"type": "content", "content": "é" * 10}, max_completion_tokens=100))
    assert parsed.output_extra_tokens == 20
    assert parsed.bound(4096).max_output_tokens == 120
    parts = {"type": "content", "content": [{"type": "text", "text": "abc"}]}
    assert parse_chat(chat(prediction=parts)).output_extra_tokens == 3


def test_chat_service_tier_is_reported() -> None:
    assert parse_chat(chat(service_tier="priority")).service_tier == "priority"
    assert parse_chat(chat()).service_tier is None


# ---------------------------------------------------------------- Responses: validation


@pytest.mark.parametrize(
    ("body", "words", "param"),
    [
        (None, ["JSON object", "null"], None),
        ({"input": "x"}, ["model is required"], "model"),
        (responses(model=["gpt"]), ["model", '["gpt"]'], "model"),
        ({"model": "gpt-5"}, ["input must be a string or a list", "null"], "input"),
        (responses(input=5), ["input", "5"], "input"),
        (responses(input={"role": "user"}), ["input", "role"], "input"),
        (responses(input=[7]), ["input[0]", "7"], "input[0]"),
        (responses(input=[{"role": "user", "content": 1}]), ["input[0].content", "1"], "input[0].content"),
        (responses(input=[{"content": "x"}]), ["input[0].role", "null"], "input[0].role"),
        (
            responses(input=[{"role": "user", "content": [{"type": "input_text", "text": None}]}]),
            ["input[0].content[0].text", "null"],
            "input[0].content[0].text",
        ),
        (responses(stream="true"), ["stream", '"true"'], "stream"),
        (
            responses(background=True),
            ["background responses are not supported", "must see the call finish"],
            "background",
        ),
        (responses(background="no"), ["background", '"no"'], "background"),
        (responses(max_output_tokens=0), ["max_output_tokens", "0"], "max_output_tokens"),
        (responses(max_output_tokens="9"), ["max_output_tokens", '"9"'], "max_output_tokens"),
        (responses(max_output_tokens=10_000_001), ["10,000,000", "10,000,001"], "max_output_tokens"),
        (responses(max_tool_calls=-1), ["max_tool_calls", "-1"], "max_tool_calls"),
        (responses(instructions=["be", "brief"]), ["instructions", '["be", "brief"]'], "instructions"),
        (responses(stream_options=[]), ["stream_options", "[]"], "stream_options"),
        (responses(tools="web_search"), ["tools must be a list", '"web_search"'], "tools"),
        (responses(tools=[{"name": "f"}]), ["tools[0].type", "null"], "tools[0].type"),
        (responses(text="json"), ["text must be an object", '"json"'], "text"),
    ],
)
def test_responses_rejects_malformed_requests_with_a_clear_sentence(body: object, words: list[str], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_responses(body)
    for word in words:
        assert word in caught.value.message
    assert caught.value.param == param


def test_responses_background_false_is_fine() -> None:
    assert parse_responses(responses(background=False)).unbounded_reason is None


# ---------------------------------------------------------------- Responses: bounds


def test_responses_string_input_and_instructions_count() -> None:
    parsed = parse_responses(responses(input="héllo", instructions="be brief", max_output_tokens=300))
    expected = REQUEST_OVERHEAD_TOKENS + 2 * MESSAGE_OVERHEAD_TOKENS + len("héllo".encode()) + len("be brief")
    assert parsed.input_tokens_bound == expected
    assert parsed.prompt_text_bytes == len("héllo".encode()) + len("be brief")
    assert (parsed.n, parsed.output_limit, parsed.include_usage) == (1, 300, False)


def test_responses_items_count_text_calls_and_outputs() -> None:
    call = {"type": "function_call", "call_id": "c1", "name": "get", "arguments": '{"q":1}'}
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        call,
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
    ]
    parsed = parse_responses(responses(input=items))
    expected = (
        REQUEST_OVERHEAD_TOKENS
        + 4 * MESSAGE_OVERHEAD_TOKENS
        + len("user" "hi") + PART_OVERHEAD_TOKENS
        + json_len(call)
        + len("c1" "42")
        + len("assistant" "ok") + PART_OVERHEAD_TOKENS
    )  # fmt: skip
    assert parsed.input_tokens_bound == expected
    assert parsed.prompt_text_bytes == len("hi42ok")


def test_responses_image_ceiling_and_tool_schemas() -> None:
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    text = {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}}
    image = {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "original"}
    parsed = parse_responses(
        responses(input=[{"role": "user", "content": [image]}], tools=[tool], tool_choice="required", text=text)
    )
    expected = (
        REQUEST_OVERHEAD_TOKENS + MESSAGE_OVERHEAD_TOKENS + len("user") + PART_OVERHEAD_TOKENS + OPENAI_IMAGE_TOKENS
        + TOOLS_PROMPT_TOKENS + json_len(tool) + TOOL_OVERHEAD_TOKENS + json_len("required")
        + json_len(text) + SCHEMA_OVERHEAD_TOKENS
    )  # fmt: skip
    assert parsed.input_tokens_bound == expected


def test_responses_provider_defined_tools_add_their_hidden_definition() -> None:
    tool = {"type": "computer_use_preview", "display_width": 1024, "display_height": 768, "environment": "linux"}
    base = parse_responses(responses())
    parsed = parse_responses(responses(tools=[tool]))
    assert parsed.input_tokens_bound == base.input_tokens_bound + TOOLS_PROMPT_TOKENS + json_len(tool) + (
        PROVIDER_TOOL_TOKENS
    )
    assert parsed.unbounded_reason is None


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id pulls in a stored conversation"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "stored prompt"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "file"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_data": "JVBE"}]}]}, "file"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}, "file_id"),
        ({"input": [{"type": "reasoning", "encrypted_content": "gAAA", "summary": []}]}, "reasoning"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "stored item"),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, '"web_search_call"'),
        ({"input": [{"type": "computer_call_output", "call_id": "c", "output": {"file_id": "f"}}]}, "file_id"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs"]}]}, "file_search"),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "code_interpreter"),
        ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "https://x"}]}, "mcp"),
        ({"tools": [{"type": "image_generation"}]}, "image_generation"),
        ({"tools": [{"type": "web_search"}]}, "search results"),
        ({"context_management": [{"type": "compaction"}]}, "context_management"),
    ],
)
def test_responses_marks_input_it_cannot_see_as_unbounded(fields: dict[str, Any], phrase: str) -> None:
    parsed = parse_responses(responses(**fields))
    assert parsed.unbounded_reason is not None
    assert phrase in parsed.unbounded_reason


def test_responses_input_may_be_omitted_only_with_stored_context() -> None:
    parsed = parse_responses({"model": "gpt-5", "previous_response_id": "resp_1"})
    assert parsed.unbounded_reason is not None
    with pytest.raises(InvalidRequest):
        parse_responses({"model": "gpt-5", "tools": [{"type": "web_search"}]})


def test_responses_web_search_limits() -> None:
    assert parse_responses(responses(tools=[{"type": "web_search"}])).max_web_searches is None
    assert parse_responses(responses(tools=[{"type": "web_search_preview"}], max_tool_calls=4)).max_web_searches == 4
    two = [{"type": "web_search"}, {"type": "web_search_preview"}]
    assert parse_responses(responses(tools=two, max_tool_calls=3)).max_web_searches == 3
    function = {"type": "function", "name": "f"}
    assert parse_responses(responses(tools=[function], max_tool_calls=3)).max_web_searches == 0
    unlimited = parse_responses(responses(tools=[{"type": "web_search"}], max_output_tokens=77))
    assert unlimited.bound(128_000).max_web_searches == 77
