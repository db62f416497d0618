"""Fault injection: latency, chunk delays, cut streams, connection resets, usage overrides, gone clients."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable

import anthropic
import httpx2
import openai
import pytest
from tests.testing.emulator_helpers import ANTHROPIC_AUTH, CHAT, MESSAGES, OPENAI_AUTH, raw

from fairmeter.testing import EmulatorServer


def _wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


def test_latency_delays_the_response(oai: openai.OpenAI) -> None:
    started = time.perf_counter()
    oai.chat.completions.create(**CHAT)
    quick = time.perf_counter() - started
    started = time.perf_counter()
    oai.chat.completions.create(**CHAT, extra_headers={"x-emulator-latency-ms": "300"})
    slow = time.perf_counter() - started
    assert slow >= 0.3
    assert quick < 0.25  # so the wait came from the header


def test_chunk_delay_spaces_the_events(oai: openai.OpenAI) -> None:
    headers = {"x-emulator-chunk-delay-ms": "50", "x-emulator-chunks": "4"}
    started = time.perf_counter()
    stream = oai.chat.completions.create(**CHAT, stream=True, extra_headers=headers)
    arrivals = [time.perf_counter() - started for _ in stream]
    # role chunk, 4 content chunks, finish chunk, [DONE]: 6 gaps of 50 ms
    assert len(arrivals) == 6
    assert arrivals[-1] >= 0.25
    assert arrivals[0] < 0.2


def test_cut_after_breaks_the_chunked_body(oai: openai.OpenAI, ant: anthropic.Anthropic, emu: EmulatorServer) -> None:
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError) as caught:
        for chunk in oai.chat.completions.create(**CHAT, stream=True, extra_headers={"x-emulator-cut-after": "3"}):
            received.append(chunk.choices[0].delta.content or "")
    assert received == ["", "Hello", " from"]
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)
    assert "incomplete chunked read" in str(caught.value.__cause__)

    with pytest.raises(httpx2.RemoteProtocolError, match="incomplete chunked read"):
        list(ant.messages.create(**MESSAGES, stream=True, extra_headers={"x-emulator-cut-after": "5"}))

    answer = raw(emu, "/v1/messages", {**MESSAGES, "stream": True}, {**ANTHROPIC_AUTH, "x-emulator-cut-after": "5"})
    assert answer.incomplete
    assert [name for name, _ in answer.events()] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
    ]


def test_cut_after_on_a_plain_body_sends_half(emu: EmulatorServer) -> None:
    whole = raw(emu, "/v1/chat/completions", CHAT, OPENAI_AUTH)
    cut = raw(emu, "/v1/chat/completions", CHAT, {**OPENAI_AUTH, "x-emulator-cut-after": "0"})
    assert cut.incomplete
    assert 0 < len(cut.body) < len(whole.body)


def test_reset_aborts_before_any_response(oai: openai.OpenAI, ant: anthropic.Anthropic, emu: EmulatorServer) -> None:
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(**CHAT, extra_headers={"x-emulator-reset": "1"})
    with pytest.raises(anthropic.APIConnectionError):
        ant.messages.create(**MESSAGES, extra_headers={"x-emulator-reset": "1"})

    with socket.create_connection(("127.0.0.1", emu.port), timeout=5) as sock:
        body = json.dumps(CHAT).encode()
        head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\nx-emulator-reset: 1\r\n"
        sock.sendall(head.encode() + f"content-length: {len(body)}\r\n\r\n".encode() + body)
        with pytest.raises(ConnectionResetError):
            sock.recv(1024)


def test_keep_alive_serves_many_requests_on_one_connection(emu: EmulatorServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    try:
        for stream in (False, True, False):
            conn.request("POST", "/v1/chat/completions", json.dumps({**CHAT, "stream": stream}), OPENAI_AUTH)
            response = conn.getresponse()
            assert response.status == 200
            response.read()
            assert response.getheader("connection") is None
    finally:
        conn.close()
    assert emu.stats()["requests"] == 3


def test_usage_override_openai(oai: openai.OpenAI) -> None:
    override = {"x-emulator-usage": '{"prompt_tokens": 1000, "prompt_tokens_details": {"cached_tokens": 100}}'}
    completion = oai.chat.completions.create(**CHAT, extra_headers=override)
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == 1000
    assert usage.prompt_tokens_details is not None
    assert (usage.prompt_tokens_details.cached_tokens, usage.prompt_tokens_details.audio_tokens) == (100, 0)
    assert usage.total_tokens == 1012  # re-derived unless overridden

    stream = oai.chat.completions.create(
        **CHAT, stream=True, stream_options={"include_usage": True}, extra_headers=override
    )
    last = list(stream)[-1]
    assert last.usage is not None and last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 100

    response = oai.responses.create(
        model="gpt-4.1",
        input="hi",
        extra_headers={"x-emulator-usage": '{"output_tokens_details": {"reasoning_tokens": 7}}'},
    )
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens == 7


def test_usage_override_anthropic_stream_splits_start_and_delta(ant: anthropic.Anthropic) -> None:
    override = json.dumps(
        {"cache_creation_input_tokens": 500, "cache_creation": {"ephemeral_1h_input_tokens": 500}, "output_tokens": 99}
    )
    events = list(ant.messages.create(**MESSAGES, stream=True, extra_headers={"x-emulator-usage": override}))
    start = events[0].message.usage
    assert start.cache_creation_input_tokens == 500
    assert start.cache_creation.ephemeral_1h_input_tokens == 500
    assert start.cache_creation.ephemeral_5m_input_tokens == 0
    assert start.output_tokens == 1
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.usage.output_tokens == 99
    assert delta.usage.cache_creation_input_tokens is None

    message = ant.messages.create(**MESSAGES, extra_headers={"x-emulator-usage": override})
    assert (message.usage.cache_creation_input_tokens, message.usage.output_tokens) == (500, 99)


def test_client_going_away_mid_stream_is_noticed(emu: EmulatorServer) -> None:
    body = json.dumps({**MESSAGES, "stream": True}).encode()
    headers = (
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: k\r\nx-emulator-tag: gone\r\n"
        f"x-emulator-chunks: 200\r\nx-emulator-chunk-delay-ms: 20\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", emu.port), timeout=5) as sock:
        sock.sendall(headers.encode() + body)
        received = b""
        while received.count(b"event: ") < 3:
            received += sock.recv(65536)
    _wait_for(lambda: emu.stats()["tags"]["gone"]["client_disconnected"] == 1)
    tally = emu.stats()["tags"]["gone"]
    assert tally["completed"] == 0
    sent = tally["chunks_sent"]
    assert 3 <= sent < 20
    time.sleep(0.1)
    assert emu.stats()["tags"]["gone"]["chunks_sent"] == sent  # generation stopped
