"""Recorded cost cases replayed exactly: status, body bytes, SSE framing, and the cut when a stream lacks its end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from tests.testing.emulator_helpers import ANTHROPIC_AUTH, OPENAI_AUTH, raw

from fairmeter.testing import EmulatorServer
from fairmeter.testing.scenarios import ScenarioError

SAMPLE = json.loads((Path(__file__).parent / "data" / "sample.json").read_text())
CASES: list[dict[str, Any]] = SAMPLE["cases"]
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "messages": "/v1/messages"}


def _expected_stream(case: dict[str, Any]) -> bytes:
    frames = []
    for payload in case["response"]:
        if case["api"] == "chat":
            frames.append(f"data: {payload}\n\n")
        else:
            frames.append(f"event: {json.loads(payload)['type']}\ndata: {payload}\n\n")
    return "".join(frames).encode()


def _replay(emu: EmulatorServer, case: dict[str, Any]) -> Any:
    auth = ANTHROPIC_AUTH if case["provider"] == "anthropic" else OPENAI_AUTH
    request = {"model": case.get("model", "m"), "messages": [], "max_tokens": 1, "stream": case["stream"]}
    return raw(emu, PATHS[case["api"]], request, {**auth, "x-emulator-scenario": case["id"]})


def test_sample_has_the_six_cases() -> None:
    assert len(CASES) == 6
    assert {c["api"] for c in CASES} == {"chat", "responses", "messages"}


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_each_case_replays_exactly(emu: EmulatorServer, case: dict[str, Any]) -> None:
    posted = raw(emu, "/_emulator/scenarios", case, {"content-type": "application/json"})
    assert posted.status == 200
    assert posted.json() == {"ok": True, "ids": [case["id"]]}

    answer = _replay(emu, case)
    assert answer.status == case["http_status"]
    if not case["stream"]:
        assert answer.json() == case["response"]
        assert answer.headers["content-type"] == "application/json"
        return
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.body == _expected_stream(case)
    lacks_end = case["id"] == "oai-chat-stream-11-cut-before-usage"  # no [DONE]: the recording was cut
    assert answer.incomplete is lacks_end


def test_whole_file_registers_through_add_scenario(emu: EmulatorServer) -> None:
    ids = emu.add_scenario(SAMPLE)
    assert ids == [c["id"] for c in CASES]
    for case in CASES:
        assert _replay(emu, case).status == case["http_status"]


def test_sdks_parse_replayed_cases(emu: EmulatorServer, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    emu.add_scenario(SAMPLE)
    chat = oai.chat.completions.create(
        model="gpt-4o-mini", messages=[], extra_headers={"x-emulator-scenario": "oai-chat-01-basic"}
    )
    assert chat.usage is not None and chat.usage.prompt_tokens == 1234
    assert chat.model == "gpt-4o-mini-2024-07-18"
    with ant.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=10,
        messages=[],
        extra_headers={"x-emulator-scenario": "ant-stream-35-two-deltas-cumulative"},
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == 345
    with pytest.raises(anthropic.APIStatusError) as caught:
        list(
            ant.messages.create(
                model="claude-haiku-4-5",
                max_tokens=10,
                messages=[],
                stream=True,
                extra_headers={"x-emulator-scenario": "ant-stream-40-error-before-start"},
            )
        )
    assert caught.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def test_explicit_cut_overrides_the_inference(emu: EmulatorServer) -> None:
    complete = next(c for c in CASES if c["id"] == "ant-stream-35-two-deltas-cumulative")
    cut = {**complete, "id": "forced-cut", "cut": True}
    cut_chat = next(c for c in CASES if c["id"] == "oai-chat-stream-11-cut-before-usage")
    ended = {**cut_chat, "id": "forced-end", "cut": False}
    emu.add_scenario([cut, ended])
    forced_cut = _replay(emu, cut)
    assert forced_cut.incomplete
    assert forced_cut.body == _expected_stream(cut)
    assert not _replay(emu, ended).incomplete


def test_recorded_error_status_is_replayed(emu: EmulatorServer) -> None:
    body = {
        "error": {"message": "Rate limit reached", "type": "requests", "param": None, "code": "rate_limit_exceeded"}
    }
    case = {"id": "rl", "provider": "openai", "api": "chat", "stream": True, "http_status": 429, "response": body}
    emu.add_scenario(case)
    answer = _replay(emu, case)
    assert (answer.status, answer.json()) == (429, body)


def test_unknown_and_malformed_scenarios(emu: EmulatorServer) -> None:
    unknown = _replay(emu, {"id": "nope", "provider": "openai", "api": "chat", "stream": False})
    assert unknown.status == 400
    assert "nope" in unknown.json()["error"]["message"]
    with pytest.raises(ScenarioError, match="provider"):
        emu.add_scenario({"id": "x", "provider": "google", "api": "chat", "response": {}})
    with pytest.raises(ScenarioError, match="response"):
        emu.add_scenario({"id": "x", "provider": "openai", "api": "chat"})
    rejected = raw(emu, "/_emulator/scenarios", {"id": "x", "provider": "anthropic", "api": "chat", "response": {}})
    assert rejected.status == 400
    assert "api" in rejected.json()["error"]


def test_reset_forgets_scenarios(emu: EmulatorServer) -> None:
    emu.add_scenario(CASES[0])
    assert _replay(emu, CASES[0]).status == 200
    assert raw(emu, "/_emulator/reset", {}).json() == {"ok": True}
    assert _replay(emu, CASES[0]).status == 400
