"""Starting and stopping the emulator, the foreground `serve()`, and the frozen clock."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import openai
import pytest
from tests.testing.emulator_helpers import CHAT

from fairmeter.clock import Clock
from fairmeter.testing import EmulatorServer, FrozenClock


def test_starts_quickly_on_a_free_port_and_stops() -> None:
    started = time.perf_counter()
    with EmulatorServer() as emu:
        assert time.perf_counter() - started < 0.5
        assert emu.port > 0
        assert emu.origin == f"http://127.0.0.1:{emu.port}"
        assert emu.openai_base_url == emu.origin + "/v1"
        with openai.OpenAI(base_url=emu.openai_base_url, api_key="k", max_retries=0) as client:
            assert client.chat.completions.create(**CHAT).choices
    with (
        openai.OpenAI(base_url=emu.openai_base_url, api_key="k", max_retries=0) as client,
        pytest.raises(openai.APIConnectionError),
    ):
        client.chat.completions.create(**CHAT)


def test_serve_prints_one_line_when_listening() -> None:
    code = "from fairmeter.testing import serve; serve('127.0.0.1', 0)"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("fairmeter emulator listening on http://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0) as client:
            assert client.models.list().data
    finally:
        process.terminate()
        process.wait(timeout=5)
        assert process.stdout is not None
        process.stdout.close()


def test_frozen_clock() -> None:
    clock: Clock = FrozenClock()
    assert clock.now() == 1_764_000_000.0
    frozen = FrozenClock(100.0)
    assert frozen.now() == frozen.now() == 100.0
    frozen.advance(2.5)
    assert frozen.now() == 102.5
    with pytest.raises(ValueError, match="forward"):
        frozen.advance(-1)


def _request(extra: str = "", stream: bool = False) -> bytes:
    body = json.dumps({**CHAT, "stream": stream}).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\n{extra}"
    return f"{head}content-length: {len(body)}\r\n\r\n".encode() + body


def test_pipelined_requests_are_answered_in_order(emu: EmulatorServer) -> None:
    slow_first = _request("x-emulator-latency-ms: 100\r\nx-emulator-tag: a\r\n")
    streamed = _request("x-emulator-chunk-delay-ms: 5\r\nx-emulator-tag: b\r\n", stream=True)
    with socket.create_connection(("127.0.0.1", emu.port), timeout=5) as sock:
        sock.sendall(slow_first + streamed + _request("connection: close\r\n"))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 3
    assert received.index(b"content-length") < received.index(b"[DONE]") < received.rindex(b"connection: close")
    assert emu.stats()["requests"] == 3
