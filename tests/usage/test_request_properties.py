"""Properties of request reading: the bound covers every byte of text, bad input only ever raises
`InvalidRequest`, and adding text never lowers the bound. Plus `ParsedRequest.bound`."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairmeter.errors import InvalidRequest
from fairmeter.pricing.worst import RequestBound
from fairmeter.usage.request import (
    MESSAGE_OVERHEAD_TOKENS,
    REQUEST_OVERHEAD_TOKENS,
    ParsedRequest,
)
from fairmeter.usage.request_anthropic import parse_count_tokens, parse_messages
from fairmeter.usage.request_openai import parse_chat, parse_responses

Body = dict[str, Any]
# A generated body, every string written into its prompt, and its number of messages.
Case = tuple[Body, list[str], int]

texts = st.text(max_size=40)


def utf8(strings: list[str]) -> int:
    return sum(len(s.encode("utf-8")) for s in strings)


# ---------------------------------------------------------------- valid bodies from random text


@st.composite
def chat_cases(draw: st.DrawFn) -> Case:
    strings: list[str] = []
    messages = []
    for _ in range(draw(st.integers(1, 5))):
        role = draw(st.sampled_from(["system", "developer", "user", "assistant", "tool"]) | texts)
        strings.append(role)
        message: dict[str, Any] = {"role": role}
        if draw(st.booleans()):
            content = draw(texts)
            strings.append(content)
            message["content"] = content
        else:
            parts = draw(st.lists(texts, min_size=1, max_size=3))
            strings.extend(parts)
            message["content"] = [{"type": "text", "text": p} for p in parts]
        if draw(st.booleans()):
            name = draw(texts)
            strings.append(name)
            message["name"] = name
        messages.append(message)
    body: Body = {"model": draw(st.text(min_size=1).filter(str.strip)), "messages": messages}
    if draw(st.booleans()):
        description = draw(texts)
        strings.append(description)  # tool definitions count their JSON, which contains the text
        body["tools"] = [{"type": "function", "function": {"name": "f", "description": description}}]
    return body, strings, len(messages)


@st.composite
def responses_cases(draw: st.DrawFn) -> Case:
    strings: list[str] = []
    body: Body = {"model": "gpt-5"}
    count = 0
    if draw(st.booleans()):
        instructions = draw(texts)
        strings.append(instructions)
        body["instructions"] = instructions
        count += 1
    if draw(st.booleans()):
        text = draw(texts)
        strings.append(text)
        body["input"] = text
        count += 1
    else:
        items = []
        for _ in range(draw(st.integers(0, 4))):
            role = draw(st.sampled_from(["user", "assistant", "developer"]))
            parts = draw(st.lists(texts, min_size=1, max_size=3))
            strings.append(role)
            strings.extend(parts)
            kind = "output_text" if role == "assistant" else "input_text"
            items.append({"type": "message", "role": role, "content": [{"type": kind, "text": p} for p in parts]})
        body["input"] = items
        count += len(items)
    return body, strings, count


@st.composite
def messages_cases(draw: st.DrawFn) -> Case:
    strings: list[str] = []
    body: Body = {"model": "claude-sonnet-4-5", "max_tokens": draw(st.integers(1, 200_000))}
    count = 0
    if draw(st.booleans()):
        system = draw(texts)
        strings.append(system)
        body["system"] = system if draw(st.booleans()) else [{"type": "text", "text": system}]
        count += 1
    messages = []
    for _ in range(draw(st.integers(0, 5))):
        role = draw(st.sampled_from(["user", "assistant"]))
        strings.append(role)
        if draw(st.booleans()):
            content: Any = draw(texts)
            strings.append(content)
        else:
            parts = draw(st.lists(texts, min_size=1, max_size=3))
            strings.extend(parts)
            content = [{"type": "text", "text": p} for p in parts]
            if draw(st.booleans()):
                result = draw(texts)
                strings.append(result)
                content.append({"type": "tool_result", "tool_use_id": "t", "content": result})
        messages.append({"role": role, "content": content})
    body["messages"] = messages
    return body, strings, count + len(messages)


PARSERS: list[tuple[Callable[[object], ParsedRequest], st.SearchStrategy[Case]]] = [
    (parse_chat, chat_cases()),
    (parse_responses, responses_cases()),
    (parse_messages, messages_cases()),
]


# ---------------------------------------------------------------- (a) the bound covers all text


@pytest.mark.parametrize(("parse", "cases"), PARSERS)
@given(data=st.data())
def test_bound_covers_every_utf8_byte_plus_overheads(
    parse: Callable[[object], ParsedRequest], cases: st.SearchStrategy[Case], data: st.DataObject
) -> None:
    body, strings, messages = data.draw(cases)
    parsed = parse(body)
    text_bytes = utf8(strings)
    floor = text_bytes + REQUEST_OVERHEAD_TOKENS + MESSAGE_OVERHEAD_TOKENS * messages
    assert parsed.input_tokens_bound >= floor
    # Every character is at least one byte: the character-level worst case is below the byte bound.
    assert floor >= sum(len(s) for s in strings) + REQUEST_OVERHEAD_TOKENS
    # The provider emulator reports ceil(bytes / 4) + 4 per message + 3.
    assert parsed.input_tokens_bound >= math.ceil(text_bytes / 4) + 4 * messages + 3
    assert parsed.unbounded_reason is None


# ---------------------------------------------------------------- (b) only InvalidRequest, ever

KEYS = [
    "model", "messages", "role", "content", "type", "text", "tools", "input", "stream", "stream_options",
    "include_usage", "n", "max_tokens", "max_completion_tokens", "max_output_tokens", "system", "source",
    "image_url", "input_audio", "data", "tool_calls", "function", "output", "max_uses", "thinking",
    "budget_tokens", "prediction", "background", "context_management", "edits", "name", "instructions",
]  # fmt: skip
TYPES = [
    "text", "image", "image_url", "input_audio", "file", "refusal", "input_text", "output_text", "input_image",
    "input_file", "message", "function_call", "function_call_output", "computer_call_output", "reasoning",
    "tool_use", "tool_result", "document", "thinking", "web_search_20250305", "web_search", "function", "base64",
    "url", "custom", "bash_20250124",
]  # fmt: skip
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
    | st.sampled_from(TYPES)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=25,
)
ALL_PARSERS: list[Callable[[object], object]] = [parse_chat, parse_responses, parse_messages, parse_count_tokens]


def only_invalid_request(parse: Callable[[object], object], body: object) -> None:
    try:
        result = parse(body)
    except InvalidRequest as exc:
        assert exc.message
        return
    if isinstance(result, ParsedRequest):
        assert result.input_tokens_bound >= REQUEST_OVERHEAD_TOKENS
        assert result.prompt_text_bytes >= 0
        assert result.n >= 1


@pytest.mark.parametrize("parse", ALL_PARSERS)
@given(body=json_values)
def test_arbitrary_json_only_raises_invalid_request(parse: Callable[[object], object], body: object) -> None:
    only_invalid_request(parse, body)


def slots(value: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in a JSON value, to replace or delete."""
    found: list[tuple[Any, Any]] = []
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            items: list[tuple[Any, Any]] = list(current.items())
        elif isinstance(current, list):
            items = list(enumerate(current))
        else:
            items = []
        for key, child in items:
            found.append((current, key))
            stack.append(child)
    return found


@pytest.mark.parametrize(("parse", "cases"), PARSERS)
@given(data=st.data())
@settings(max_examples=200)
def test_mutated_valid_bodies_only_raise_invalid_request(
    parse: Callable[[object], ParsedRequest], cases: st.SearchStrategy[Case], data: st.DataObject
) -> None:
    body = copy.deepcopy(data.draw(cases)[0])
    body.setdefault("tools", [{"type": "function", "function": {"name": "f"}}, {"name": "g", "input_schema": {}}])
    for _ in range(data.draw(st.integers(1, 3))):
        targets = slots(body)
        container, key = data.draw(st.sampled_from(targets))
        if isinstance(container, dict) and data.draw(st.booleans()):
            del container[key]
        else:
            container[key] = data.draw(json_values)
    only_invalid_request(parse, body)


def test_deep_nesting_is_refused_not_crashed() -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    for parse in ALL_PARSERS:
        body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "extra": deep}
        with pytest.raises(InvalidRequest, match="nested too deeply"):
            parse(body | {"input": "x"})


# ---------------------------------------------------------------- (c) more text never lowers the bound


def append_text(body: Body, index: int, extra: str, parse: Callable[[object], ParsedRequest]) -> Body:
    grown = copy.deepcopy(body)
    if parse is parse_responses:
        items = grown["input"]
        if isinstance(items, str) or not items:
            grown["input"] = (items or "") + extra if isinstance(items, str) else [{"role": "user", "content": extra}]
            return grown
        message = items[index % len(items)]
    else:
        messages = grown["messages"]
        if not messages:
            messages.append({"role": "user", "content": extra})
            return grown
        message = messages[index % len(messages)]
    content = message.get("content")
    if isinstance(content, str):
        message["content"] = content + extra
    else:
        kind = "output_text" if message.get("role") == "assistant" else "input_text"
        kind = kind if parse is parse_responses else "text"
        content.append({"type": kind, "text": extra})
    return grown


@pytest.mark.parametrize(("parse", "cases"), PARSERS)
@given(data=st.data(), index=st.integers(0, 10), extra=texts)
def test_appending_text_never_lowers_the_bound(
    parse: Callable[[object], ParsedRequest],
    cases: st.SearchStrategy[Case],
    data: st.DataObject,
    index: int,
    extra: str,
) -> None:
    body = data.draw(cases)[0]
    before = parse(body)
    after = parse(append_text(body, index, extra, parse))
    assert after.input_tokens_bound >= before.input_tokens_bound + len(extra.encode())
    assert after.prompt_text_bytes >= before.prompt_text_bytes + len(extra.encode())


# ---------------------------------------------------------------- ParsedRequest.bound


def parsed(**fields: Any) -> ParsedRequest:
    values: dict[str, Any] = {
        "model": "m",
        "stream": False,
        "include_usage": False,
        "n": 1,
        "output_limit": None,
        "input_tokens_bound": 500,
        "prompt_text_bytes": 40,
        "max_web_searches": 0,
        "unbounded_reason": None,
    }
    values.update(fields)
    return ParsedRequest(**values)


def test_bound_uses_the_output_limit_times_n() -> None:
    assert parsed(n=3, output_limit=100).bound(8192) == RequestBound(
        max_input_tokens=500, max_output_tokens=300, max_web_searches=0, prompt_text_bytes=40
    )


def test_bound_falls_back_to_the_model_maximum() -> None:
    assert parsed(n=2).bound(8192).max_output_tokens == 16_384


def test_bound_adds_extra_output_per_choice() -> None:
    assert parsed(n=2, output_limit=100, output_extra_tokens=7).bound(8192).max_output_tokens == 214


def test_unlimited_searches_are_bounded_by_output_tokens() -> None:
    assert parsed(max_web_searches=None, output_limit=50).bound(8192).max_web_searches == 50
    assert parsed(max_web_searches=None).bound(8192).max_web_searches == 8192
    assert parsed(max_web_searches=4, output_limit=50).bound(8192).max_web_searches == 4


@given(
    n=st.integers(1, 128),
    limit=st.none() | st.integers(1, 10_000_000),
    model_max=st.integers(1, 1_000_000),
    searches=st.none() | st.integers(0, 1000),
)
def test_bound_is_never_below_any_single_choice(
    n: int, limit: int | None, model_max: int, searches: int | None
) -> None:
    bound = parsed(n=n, output_limit=limit, max_web_searches=searches).bound(model_max)
    per_choice = limit if limit is not None else model_max
    assert bound.max_output_tokens == n * per_choice
    assert bound.max_web_searches == (searches if searches is not None else bound.max_output_tokens)
    assert bound.max_input_tokens == 500
