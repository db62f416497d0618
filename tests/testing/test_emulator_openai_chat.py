"""OpenAI Chat Completions through the official SDK, and the raw stream format."""

from __future__ import annotations

import json

import openai
import pytest
from tests.testing.emulator_helpers import CHAT, OPENAI_AUTH, raw

from fairmeter.testing import EmulatorServer

WORDS = "Hello from the fairmeter emulator. This is a short reply with"


def test_plain_completion_usage_follows_the_formula(oai: openai.OpenAI) -> None:
    # "You are terse." is 14 bytes, "héllo" 6: ceil(20 / 4) + 2 messages * 4 + 3 = 16
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "héllo"}]
    completion = oai.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert completion.choices[0].message.content == WORDS
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (16, 12, 28)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.prompt_tokens_details.audio_tokens == 0
    details = usage.completion_tokens_details
    assert details is not None
    assert (details.reasoning_tokens, details.audio_tokens) == (0, 0)
    assert (details.accepted_prediction_tokens, details.rejected_prediction_tokens) == (0, 0)


def test_content_parts_count_their_text(oai: openai.OpenAI) -> None:
    parts = [{"type": "text", "text": "abcd"}, {"type": "text", "text": "efgh"}]
    completion = oai.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": parts}])
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 2 + 4 + 3


def test_output_limit_caps_chunks_and_says_length(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(**CHAT, max_completion_tokens=5)
    assert completion.usage.completion_tokens == 5
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "Hello from the fairmeter emulator"
    legacy = oai.chat.completions.create(**CHAT, max_tokens=3)
    assert legacy.usage.completion_tokens == 3


def test_chunks_header_sets_output_tokens(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(**CHAT, extra_headers={"x-emulator-chunks": "40"})
    assert completion.usage.completion_tokens == 40
    capped = oai.chat.completions.create(**CHAT, max_tokens=7, extra_headers={"x-emulator-chunks": "40"})
    assert capped.usage.completion_tokens == 7


def test_n_choices_bill_n_times(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(**CHAT, n=2, extra_headers={"x-emulator-chunks": "5"})
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.usage.completion_tokens == 10
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 10


def test_stream_without_include_usage_has_no_usage_key(oai: openai.OpenAI, emu: EmulatorServer) -> None:
    chunks = list(oai.chat.completions.create(**CHAT, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == WORDS
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)

    answer = raw(emu, "/v1/chat/completions", {**CHAT, "stream": True}, OPENAI_AUTH)
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["transfer-encoding"] == "chunked"
    events = answer.events()
    assert all(name is None for name, _ in events)
    assert events[-1][1] == "[DONE]"
    payloads = [json.loads(data) for _, data in events[:-1]]
    assert len(payloads) == 1 + 12 + 1
    assert all("usage" not in p for p in payloads)


def test_stream_with_include_usage_ends_with_a_usage_chunk(oai: openai.OpenAI, emu: EmulatorServer) -> None:
    stream = oai.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3 + 4 + 3, 12)
    assert all(c.usage is None for c in chunks[:-1])

    answer = raw(
        emu, "/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}, OPENAI_AUTH
    )
    payloads = [json.loads(data) for _, data in answer.events()[:-1]]
    assert all("usage" in p and p["usage"] is None for p in payloads[:-1])
    assert payloads[-1]["choices"] == []
    assert payloads[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


def test_stream_with_n_choices_interleaves_and_counts_all(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        **CHAT, n=2, stream=True, stream_options={"include_usage": True}, extra_headers={"x-emulator-chunks": "3"}
    )
    chunks = list(stream)
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: "Hello from the", 1: "Hello from the"}
    assert chunks[-1].usage.completion_tokens == 6


def test_models_list(oai: openai.OpenAI) -> None:
    ids = {m.id for m in oai.models.list()}
    assert {"gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-5", "o3", "claude-sonnet-4-5", "claude-haiku-4-5"} <= ids


def test_overload_mid_stream_raises_api_error(oai: openai.OpenAI) -> None:
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in oai.chat.completions.create(**CHAT, stream=True, extra_headers={"x-emulator-overload-after": "3"}):
            received.append(chunk.choices[0].delta.content or "")
    assert received == ["", "Hello", " from"]
    assert caught.value.body == {
        "message": "The server is overloaded or not ready yet.",
        "type": "server_error",
        "param": None,
        "code": None,
    }


def test_obfuscation_can_be_turned_off(emu: EmulatorServer) -> None:
    options = {"include_usage": True, "include_obfuscation": False}
    answer = raw(emu, "/v1/chat/completions", {**CHAT, "stream": True, "stream_options": options}, OPENAI_AUTH)
    payloads = [json.loads(data) for _, data in answer.events()[:-1]]
    assert all("obfuscation" not in p for p in payloads)
    with_default = raw(emu, "/v1/chat/completions", {**CHAT, "stream": True}, OPENAI_AUTH)
    assert all("obfuscation" in json.loads(data) for _, data in with_default.events()[:-1])
