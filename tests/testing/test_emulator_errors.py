"""Injected and real errors surface as the SDKs' own exception classes with the providers' bodies."""

from __future__ import annotations

import anthropic
import openai
import pytest
from tests.testing.emulator_helpers import ANTHROPIC_AUTH, CHAT, MESSAGES, OPENAI_AUTH, raw

from fairmeter.testing import EmulatorServer

OPENAI_CASES = [
    ("400", 400, openai.BadRequestError, "invalid_request_error", None),
    ("401", 401, openai.AuthenticationError, "invalid_request_error", "invalid_api_key"),
    ("429", 429, openai.RateLimitError, "tokens", "rate_limit_exceeded"),
    ("500", 500, openai.InternalServerError, "server_error", None),
    ("529", 503, openai.InternalServerError, "server_error", None),  # OpenAI has no 529
]


@pytest.mark.parametrize(("header", "status", "exc_class", "error_type", "code"), OPENAI_CASES)
def test_openai_error_statuses(
    oai: openai.OpenAI,
    header: str,
    status: int,
    exc_class: type[openai.APIStatusError],
    error_type: str,
    code: str | None,
) -> None:
    for call in (
        lambda: oai.chat.completions.create(**CHAT, extra_headers={"x-emulator-error": header}),
        lambda: oai.responses.create(model="gpt-4.1", input="hi", extra_headers={"x-emulator-error": header}),
    ):
        with pytest.raises(exc_class) as caught:
            call()
        error = caught.value
        assert type(error) is exc_class
        assert error.status_code == status
        body = error.body
        assert isinstance(body, dict)
        assert set(body) == {"message", "type", "param", "code"}  # the SDK unwraps {"error": {...}}
        assert (body["type"], body["code"], body["param"]) == (error_type, code, None)
        assert body["message"]
        assert error.request_id is not None and error.request_id.startswith("req_")


ANTHROPIC_CASES = [
    ("400", anthropic.BadRequestError, "invalid_request_error"),
    ("401", anthropic.AuthenticationError, "authentication_error"),
    ("429", anthropic.RateLimitError, "rate_limit_error"),
    ("500", anthropic.InternalServerError, "api_error"),
    ("529", anthropic.OverloadedError, "overloaded_error"),
]


@pytest.mark.parametrize(("header", "exc_class", "error_type"), ANTHROPIC_CASES)
def test_anthropic_error_statuses(
    ant: anthropic.Anthropic, header: str, exc_class: type[anthropic.APIStatusError], error_type: str
) -> None:
    with pytest.raises(exc_class) as caught:
        ant.messages.create(**MESSAGES, extra_headers={"x-emulator-error": header})
    error = caught.value
    assert type(error) is exc_class
    assert error.status_code == int(header)
    body = error.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert body["error"]["message"]
    assert body["request_id"] == error.request_id
    assert error.request_id is not None and error.request_id.startswith("req_")


def test_anthropic_rate_limit_says_when_to_retry(emu: EmulatorServer) -> None:
    answer = raw(emu, "/v1/messages", MESSAGES, {**ANTHROPIC_AUTH, "x-emulator-error": "429"})
    assert answer.status == 429
    assert answer.headers["retry-after"] == "1"


def test_missing_openai_key_is_openais_401(emu: EmulatorServer) -> None:
    answer = raw(emu, "/v1/chat/completions", CHAT, {"content-type": "application/json"})
    assert answer.status == 401
    error = answer.json()["error"]
    assert error["message"].startswith("You didn't provide an API key.")
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, None)
    assert answer.headers["x-request-id"].startswith("req_")


def test_missing_anthropic_key_is_anthropics_401(emu: EmulatorServer) -> None:
    answer = raw(emu, "/v1/messages", MESSAGES, {"content-type": "application/json"})
    assert answer.status == 401
    body = answer.json()
    assert body["type"] == "error"
    assert body["error"] == {"type": "authentication_error", "message": "x-api-key header is required"}
    assert body["request_id"] == answer.headers["request-id"]


def test_models_list_needs_a_key(emu: EmulatorServer) -> None:
    assert raw(emu, "/v1/models", method="GET").status == 401
    assert raw(emu, "/v1/models", headers=OPENAI_AUTH, method="GET").status == 200


def test_invalid_requests_are_400s(emu: EmulatorServer) -> None:
    no_messages = raw(emu, "/v1/chat/completions", {"model": "gpt-4o-mini"}, OPENAI_AUTH)
    assert no_messages.status == 400
    assert no_messages.json()["error"]["param"] == "messages"
    no_max_tokens = raw(emu, "/v1/messages", {"model": "claude-haiku-4-5", "messages": []}, ANTHROPIC_AUTH)
    assert no_max_tokens.status == 400
    assert no_max_tokens.json()["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}
    bad_header = raw(emu, "/v1/chat/completions", CHAT, {**OPENAI_AUTH, "x-emulator-chunks": "many"})
    assert bad_header.status == 400
    assert "x-emulator-chunks" in bad_header.json()["error"]["message"]


def test_unknown_route_is_openais_404(emu: EmulatorServer) -> None:
    answer = raw(emu, "/v1/nothing", {}, OPENAI_AUTH)
    assert answer.status == 404
    assert answer.json()["error"]["message"] == "Invalid URL (POST /v1/nothing)"
