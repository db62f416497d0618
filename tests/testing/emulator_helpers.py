"""Helpers for the emulator's tests: request constants and a raw stdlib HTTP exchange."""

from __future__ import annotations

import http.client
import json
from typing import Any

from fairmeter.testing import EmulatorServer

OPENAI_AUTH = {"authorization": "Bearer sk-test", "content-type": "application/json"}
ANTHROPIC_AUTH = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01", "content-type": "application/json"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
MESSAGES = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "Say hello"}]}


class Raw:
    """A raw HTTP/1.1 exchange (stdlib), for checks on exact bytes and headers."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes, incomplete: bool) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.incomplete = incomplete

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[tuple[str | None, str]]:
        """(event name, data) for each SSE event in the body."""
        out: list[tuple[str | None, str]] = []
        for block in self.body.decode().split("\n\n"):
            if not block:
                continue
            name = None
            data = ""
            for line in block.split("\n"):
                if line.startswith("event: "):
                    name = line[len("event: ") :]
                elif line.startswith("data: "):
                    data = line[len("data: ") :]
            out.append((name, data))
        return out


def raw(
    emu: EmulatorServer, path: str, payload: Any = None, headers: dict[str, str] | None = None, method: str = "POST"
) -> Raw:
    """Send one request with http.client and read the whole answer, noting an incomplete body."""
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    try:
        body = None if payload is None else json.dumps(payload).encode()
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        try:
            data, incomplete = response.read(), False
        except http.client.IncompleteRead as exc:
            data, incomplete = exc.partial, True
        return Raw(response.status, {k.lower(): v for k, v in response.getheaders()}, data, incomplete)
    finally:
        conn.close()
