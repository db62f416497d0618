"""OpenAI Responses through the official SDK, and the raw event stream."""

from __future__ import annotations

import json

import openai
from tests.testing.emulator_helpers import OPENAI_AUTH, raw

from fairmeter.testing import EmulatorServer

WORDS = "Hello from the fairmeter emulator. This is a short reply with"
REQUEST = {"model": "gpt-4.1", "input": "Say hello"}


def test_plain_response(oai: openai.OpenAI) -> None:
    # "Say hello" (9 bytes) + "Be brief." (9 bytes): ceil(18 / 4) + 1 message * 4 + 3 = 12
    response = oai.responses.create(model="gpt-4.1", input="Say hello", instructions="Be brief.")
    assert response.status == "completed"
    assert response.model == "gpt-4.1"
    assert response.output_text == WORDS
    usage = response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (12, 12, 24)
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_input_items_count_as_messages(oai: openai.OpenAI) -> None:
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "abcd"}]},
        {"role": "assistant", "content": "efgh"},
        {"role": "user", "content": "ijkl"},
    ]
    response = oai.responses.create(model="gpt-4.1", input=items)
    assert response.usage is not None
    assert response.usage.input_tokens == 3 + 3 * 4 + 3


def test_max_output_tokens_makes_it_incomplete(oai: openai.OpenAI) -> None:
    response = oai.responses.create(**REQUEST, max_output_tokens=4)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 4


def test_stream_events_in_order_with_usage_only_at_the_end(oai: openai.OpenAI) -> None:
    with oai.responses.stream(**REQUEST, extra_headers={"x-emulator-chunks": "3"}) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.usage is None
    assert final.output_text == "Hello from the"
    assert final.usage is not None
    assert final.usage.output_tokens == 3


def test_stream_raw_events_are_named_after_their_type(emu: EmulatorServer) -> None:
    answer = raw(emu, "/v1/responses", {**REQUEST, "stream": True}, OPENAI_AUTH)
    events = answer.events()
    assert all(name == json.loads(data)["type"] for name, data in events)
    assert sum(1 for name, data in events if "usage" in json.loads(data).get("response", {})) == 3
    usages = [json.loads(data)["response"]["usage"] for name, data in events if name and "response" in json.loads(data)]
    assert usages[:2] == [None, None]
    assert usages[-1]["output_tokens"] == 12


def test_overload_mid_stream_is_a_failed_response(oai: openai.OpenAI) -> None:
    stream = oai.responses.create(**REQUEST, stream=True, extra_headers={"x-emulator-overload-after": "5"})
    events = list(stream)
    assert len(events) == 6
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed"
    assert events[-1].response.error.code == "server_error"


def test_overload_before_anything_is_an_error_event(oai: openai.OpenAI) -> None:
    stream = oai.responses.create(**REQUEST, stream=True, extra_headers={"x-emulator-overload-after": "0"})
    events = list(stream)
    assert [e.type for e in events] == ["error"]
    assert events[0].code == "server_error"
