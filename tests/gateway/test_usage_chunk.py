"""Which OpenAI chat chunk the gateway removes when it asked for usage itself."""

from __future__ import annotations

import pytest

from fairmeter.gateway.proxy import _is_usage_chunk


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
    assert _is_usage_chunk(data) is removed
