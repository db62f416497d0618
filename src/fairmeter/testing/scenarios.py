"""Recorded responses, replayed byte for byte (`x-emulator-scenario: <id>`).

A scenario has exactly the shape of a cost case in the shared cost-case files, so a case can be registered as-is:
`{"id", "provider", "api", "stream", "http_status", "response", "cut"}` where `response` is the body JSON, or for a
stream the list of SSE `data:` payload strings in arrival order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from fairmeter.record import record
from fairmeter.testing.errors import anthropic_headers, openai_headers
from fairmeter.testing.sse import data_frame, event_frame, new_id
from fairmeter.testing.wire import Reply

_APIS = {"openai": ("chat", "responses"), "anthropic": ("messages",)}
# A recorded stream that holds one of these ended properly; one that does not was cut.
_TERMINAL_EVENTS = {
    "messages": {"message_stop", "error"},
    "responses": {"response.completed", "response.incomplete", "response.failed", "error"},
}


class ScenarioError(ValueError):
    """A scenario that cannot be registered, or an unknown scenario id."""


@record
class Scenario:
    """One recorded response."""

    id: str
    provider: str
    api: str
    http_status: int
    response: Any
    cut: bool | None

    def reply(self) -> Reply:
        """The recorded status and body (or SSE events), exactly."""
        request_id = new_id("req_011" if self.provider == "anthropic" else "req_")
        headers = anthropic_headers if self.provider == "anthropic" else openai_headers
        if not isinstance(self.response, list):
            body = self.response.encode() if isinstance(self.response, str) else orjson.dumps(self.response)
            return Reply(self.http_status, headers(request_id), body)
        events = [self._frame(payload) for payload in self.response]
        cut = self.cut if self.cut is not None else not self._terminated()
        return Reply(
            self.http_status,
            headers(request_id, "text/event-stream; charset=utf-8"),
            events=events,
            cut_after=len(events) if cut else None,
        )

    def _frame(self, payload: str) -> bytes:
        if self.api == "chat":
            return data_frame(payload.encode())
        event = _event_type(payload)
        return data_frame(payload.encode()) if event is None else event_frame(event, payload.encode())

    def _terminated(self) -> bool:
        if self.api == "chat":
            return bool(self.response) and self.response[-1].strip() == "[DONE]"
        terminal = _TERMINAL_EVENTS[self.api]
        return any(_event_type(payload) in terminal for payload in self.response)


def _event_type(payload: str) -> str | None:
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    return kind if isinstance(kind, str) else None


def parse_scenario(case: Mapping[str, Any]) -> Scenario:
    """Validate one case; raises `ScenarioError` saying what is wrong."""
    if not isinstance(case, Mapping):
        raise ScenarioError("a scenario must be a JSON object")
    ident, provider, api = case.get("id"), case.get("provider"), case.get("api")
    if not isinstance(ident, str) or not ident:
        raise ScenarioError("scenario 'id' must be a non-empty string")
    if provider not in _APIS:
        raise ScenarioError(f"scenario {ident!r}: 'provider' must be 'openai' or 'anthropic', got {provider!r}")
    if api not in _APIS[provider]:
        raise ScenarioError(f"scenario {ident!r}: 'api' for {provider} must be one of {_APIS[provider]}, got {api!r}")
    status = case.get("http_status", 200)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise ScenarioError(f"scenario {ident!r}: 'http_status' must be an HTTP status, got {status!r}")
    if "response" not in case:
        raise ScenarioError(f"scenario {ident!r}: 'response' is missing")
    response = case["response"]
    if isinstance(response, list) and not all(isinstance(payload, str) for payload in response):
        raise ScenarioError(f"scenario {ident!r}: a stream's 'response' must be a list of SSE data strings")
    cut = case.get("cut")
    if cut is not None and not isinstance(cut, bool):
        raise ScenarioError(f"scenario {ident!r}: 'cut' must be true, false or null")
    return Scenario(ident, provider, api, status, response, cut)


def parse_scenarios(payload: Any) -> list[Scenario]:
    """One case, a list of cases, or a whole cost-case file (`{"cases": [...]}`)."""
    if isinstance(payload, Mapping) and "cases" in payload and "id" not in payload:
        payload = payload["cases"]
    cases = payload if isinstance(payload, list) else [payload]
    return [parse_scenario(case) for case in cases]
