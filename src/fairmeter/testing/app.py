"""Routing: one synchronous function from a parsed request to a `Reply`, plus the `/_emulator/` control routes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from fairmeter.record import record
from fairmeter.testing import anthropic_messages, openai_chat, openai_responses
from fairmeter.testing.behaviour import Behaviour, BehaviourError, parse_behaviour
from fairmeter.testing.errors import (
    ANTHROPIC_MISSING_KEY,
    OPENAI_MISSING_KEY,
    anthropic_error,
    openai_error,
    openai_error_body,
    openai_headers,
)
from fairmeter.testing.scenarios import Scenario, ScenarioError, parse_scenarios
from fairmeter.testing.sse import new_id
from fairmeter.testing.stats import Stats
from fairmeter.testing.wire import Reply, Request

MODELS = (
    ("gpt-4o-mini", "system"),
    ("gpt-4o", "system"),
    ("gpt-4.1", "system"),
    ("gpt-4.1-mini", "system"),
    ("gpt-4.1-nano", "system"),
    ("gpt-5", "system"),
    ("gpt-5-mini", "system"),
    ("o3", "system"),
    ("o4-mini", "system"),
    ("claude-sonnet-4-5", "anthropic"),
    ("claude-haiku-4-5", "anthropic"),
    ("claude-opus-4-1", "anthropic"),
)
_MODELS_CREATED = 1_746_000_000


def _models(body: dict[str, Any], behaviour: Behaviour) -> Reply:
    data = [{"id": mid, "object": "model", "created": _MODELS_CREATED, "owned_by": owner} for mid, owner in MODELS]
    return Reply(200, openai_headers(new_id("req_")), orjson.dumps({"object": "list", "data": data}))


def _count_tokens(body: dict[str, Any], behaviour: Behaviour) -> Reply:
    return anthropic_messages.count_tokens(body)


@record
class _Route:
    method: str
    anthropic: bool
    answer: Callable[[dict[str, Any], Behaviour], Reply]

    def error(self, status: int, message: str | None = None) -> Reply:
        return anthropic_error(status, message) if self.anthropic else openai_error(status, message)


_ROUTES = {
    "/v1/chat/completions": _Route("POST", False, openai_chat.chat_completion),
    "/v1/responses": _Route("POST", False, openai_responses.create_response),
    "/v1/models": _Route("GET", False, _models),
    "/v1/messages": _Route("POST", True, anthropic_messages.create_message),
    "/v1/messages/count_tokens": _Route("POST", True, _count_tokens),
}


def _authorized(headers: dict[str, str]) -> bool:
    # Either scheme is accepted for either provider: the gateway may forward its upstream key in either form.
    if headers.get("x-api-key"):
        return True
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def _json(status: int, payload: Any) -> Reply:
    return Reply(status, [("content-type", "application/json")], orjson.dumps(payload))


class Emulator:
    """The emulator's state (stats, scenarios) and its request handler. Used only from the event loop thread."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.scenarios: dict[str, Scenario] = {}

    def add_scenarios(self, payload: Any) -> list[str]:
        """Register one case, a list of cases or a cost-case file; returns the ids. Raises `ScenarioError`."""
        parsed = parse_scenarios(payload)
        self.scenarios.update((s.id, s) for s in parsed)
        return [s.id for s in parsed]

    def reset(self) -> None:
        """Clear stats and scenarios."""
        self.stats.reset()
        self.scenarios.clear()

    def handle(self, request: Request) -> Reply:
        """Answer one request."""
        route = _ROUTES.get(request.path)
        if route is None or route.method != request.method:
            if request.path.startswith("/_emulator/"):
                return self._control(request)
            self.stats.count(request.path)
            message = f"Invalid URL ({request.method} {request.path})"
            return Reply(
                404, openai_headers(new_id("req_")), orjson.dumps(openai_error_body(message, "invalid_request_error"))
            )
        self.stats.count(request.path)
        try:
            behaviour = parse_behaviour(request.headers)
        except BehaviourError as exc:
            return route.error(400, str(exc))
        body: Any = {}
        if request.method == "POST":
            try:
                body = orjson.loads(request.body)
            except orjson.JSONDecodeError:
                body = None
        reply = self._answer(route, request, behaviour, body)
        if behaviour.tag is not None:
            reply.tally = self.stats.tagged(behaviour.tag, body, request.headers)
        reply.latency_s = behaviour.latency_s
        reply.chunk_delay_s = behaviour.chunk_delay_s
        reply.reset = behaviour.reset
        if behaviour.cut_after is not None:
            reply.cut_after = behaviour.cut_after
        return reply

    def _answer(self, route: _Route, request: Request, behaviour: Behaviour, body: Any) -> Reply:
        if not _authorized(request.headers):
            return route.error(401, ANTHROPIC_MISSING_KEY if route.anthropic else OPENAI_MISSING_KEY)
        if behaviour.error is not None:
            return route.error(behaviour.error)
        if not isinstance(body, dict):
            return route.error(400, "The request body is not valid JSON.")
        if behaviour.scenario is not None:
            scenario = self.scenarios.get(behaviour.scenario)
            if scenario is None:
                return route.error(400, f"Unknown emulator scenario {behaviour.scenario!r}.")
            return scenario.reply()
        return route.answer(body, behaviour)

    def _control(self, request: Request) -> Reply:
        """`/_emulator/` routes: not counted in stats, no auth."""
        key = (request.method, request.path)
        if key == ("GET", "/_emulator/stats"):
            return _json(200, self.stats.snapshot())
        if key == ("POST", "/_emulator/reset"):
            self.reset()
            return _json(200, {"ok": True})
        if key == ("POST", "/_emulator/scenarios"):
            try:
                ids = self.add_scenarios(orjson.loads(request.body))
            except (orjson.JSONDecodeError, ScenarioError) as exc:
                return _json(400, {"error": str(exc)})
            return _json(200, {"ok": True, "ids": ids})
        return _json(404, {"error": f"no emulator control route {request.method} {request.path}"})
