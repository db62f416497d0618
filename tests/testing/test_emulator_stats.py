"""`/_emulator/stats`: counts by path and by tag, last request seen, completion of streams."""

from __future__ import annotations

import json

import anthropic
import openai
from tests.testing.emulator_helpers import CHAT, MESSAGES, raw

from fairmeter.testing import EmulatorServer


def test_counts_by_path_and_tag(emu: EmulatorServer, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    oai.chat.completions.create(**CHAT, extra_headers={"x-emulator-tag": "alpha"})
    oai.chat.completions.create(**CHAT)
    list(
        ant.messages.create(**MESSAGES, stream=True, extra_headers={"x-emulator-tag": "beta", "x-emulator-chunks": "3"})
    )
    ant.messages.count_tokens(model="claude-haiku-4-5", messages=[{"role": "user", "content": "x"}])

    stats = emu.stats()
    assert stats["requests"] == 4
    assert stats["by_path"] == {"/v1/chat/completions": 2, "/v1/messages": 1, "/v1/messages/count_tokens": 1}
    alpha = stats["tags"]["alpha"]
    assert (alpha["requests"], alpha["chunks_sent"], alpha["completed"], alpha["client_disconnected"]) == (1, 0, 1, 0)
    assert alpha["last_body"] == CHAT
    assert alpha["last_headers"]["authorization"] == "Bearer sk-test"
    assert alpha["last_headers"]["x-emulator-tag"] == "alpha"
    beta = stats["tags"]["beta"]
    # message_start, content_block_start, ping, 3 deltas, content_block_stop, message_delta, message_stop
    assert (beta["requests"], beta["chunks_sent"], beta["completed"]) == (1, 9, 1)
    assert beta["last_body"]["stream"] is True


def test_control_routes_are_not_counted_and_match_the_method(emu: EmulatorServer) -> None:
    over_http = raw(emu, "/_emulator/stats", method="GET")
    assert over_http.status == 200
    assert over_http.json() == {"requests": 0, "by_path": {}, "tags": {}}
    assert emu.stats() == over_http.json()


def test_reset_clears_counts(emu: EmulatorServer, oai: openai.OpenAI) -> None:
    oai.chat.completions.create(**CHAT, extra_headers={"x-emulator-tag": "t"})
    assert emu.stats()["requests"] == 1
    emu.reset()
    assert emu.stats() == {"requests": 0, "by_path": {}, "tags": {}}


def test_failed_and_cut_replies_are_not_completed(emu: EmulatorServer, oai: openai.OpenAI) -> None:
    headers = {"x-emulator-tag": "cut", "x-emulator-cut-after": "2"}
    raw(emu, "/v1/chat/completions", {**CHAT, "stream": True}, {"authorization": "Bearer k", **headers})
    tally = emu.stats()["tags"]["cut"]
    assert (tally["chunks_sent"], tally["completed"]) == (2, 0)
    assert json.dumps(tally)  # JSON-ready
