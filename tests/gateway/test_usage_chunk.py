"""Which OpenAI chat chunk the gateway removes when it asked for usage itself."""

from __future__ import annotations

import pytest

from fairmeter.usage import anthropic_messages, openai_chat, openai_responses


@pytest.mark.parametrize(
    ("data", "removed"),
    [
        (b'{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}', True),
        (b'{"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}', True),
        (b'{"choices":[{"delta":{"content":"hi"}}],"usage":null}', False),
        (b'{"choices": [{"delta": {"content": "hi"}}], "usage": null}', False),
        (b'{"choices":[],"usage":null}', False),
        (b'{"choices":[{"delta":{"content":"\\"usage\\":{}"}}]}', False),
        (b"[DONE]", False),
        (b'{"choices":[],"usage":', False),
    ],
)
def test_only_the_usage_chunk_is_removed(data: bytes, removed: bool) -> None:
    reader = openai_chat.StreamReader()
    reader.feed(data)
    assert reader.usage_only is removed
    reader.feed(b'{"choices":[{"delta":{"content":"more"}}],"usage":null}')
    assert reader.usage_only is False, "the flag describes the event fed last only"


def test_readers_of_other_wire_formats_never_mark_an_event_usage_only() -> None:
    events = [
        b'{"type":"response.completed","response":{"usage":{"input_tokens":1,"output_tokens":2}}}',
        b'{"type":"message_delta","usage":{"output_tokens":2}}',
        b'{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}',
    ]
    for module in (openai_responses, anthropic_messages):
        reader = module.StreamReader()
        for data in events:
            reader.feed(data)
            assert reader.usage_only is False
