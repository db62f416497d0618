"""Calls through the real gateway with the official SDKs: what reaches the client, and what is billed."""

from __future__ import annotations

import http.client
import json
from decimal import Decimal

import anthropic
import openai
from tests.conftest import UPSTREAM_KEY, Gw

from fairmeter.money import to_nano

PROMPT = [{"role": "user", "content": "Say something about prime numbers."}]


def oai(gw: Gw, secret: str, **kw: object) -> openai.OpenAI:
    """An openai client on the gateway, closed when the test ends."""
    kw.setdefault("max_retries", 0)
    client = openai.OpenAI(base_url=gw.openai_base_url, api_key=secret, **kw)  # type: ignore[arg-type]
    gw.clients.append(client)
    return client


def ant(gw: Gw, secret: str, **kw: object) -> anthropic.Anthropic:
    """An anthropic client on the gateway, closed when the test ends."""
    kw.setdefault("max_retries", 0)
    client = anthropic.Anthropic(base_url=gw.origin, **{"api_key": secret, **kw})  # type: ignore[arg-type]
    gw.clients.append(client)
    return client


def test_chat_plain_is_priced_exactly_and_identified(gateway: Gw, emulator) -> None:  # type: ignore[no-untyped-def]
    _, secret = gateway.key()
    raw = oai(gateway, secret).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=PROMPT, max_tokens=100, extra_headers={"x-emulator-tag": "plain"}
    )
    completion = raw.parse()
    call = gateway.call(raw.headers["fairmeter-call-id"])
    assert completion.usage is not None
    assert call["status"] == "ok" and call["usage_status"] == "complete" and not call["estimated"]
    assert call["input_tokens"] == completion.usage.prompt_tokens
    assert call["output_tokens"] == completion.usage.completion_tokens
    # gpt-4o-mini from genai-prices: $0.15 / $0.60 per million tokens
    cost = (
        Decimal(completion.usage.prompt_tokens) * Decimal("0.15")
        + Decimal(completion.usage.completion_tokens) * Decimal("0.6")
    ) / 1_000_000
    assert Decimal(call["cost_usd"]) == cost
    assert Decimal(call["billed_usd"]) * 10**9 == to_nano(cost)
    assert sum(Decimal(v) for v in call["cost_breakdown_usd"].values()) == cost
    assert call["price_source"].startswith("genai-prices")
    assert call["unit_prices"]["input"] == "0.15"
    assert Decimal(call["reserved_usd"]) >= Decimal(call["billed_usd"])
    # the upstream saw fairmeter's upstream key, never the client's key
    seen = emulator.stats()["tags"]["plain"]["last_headers"]
    assert seen.get("authorization") == f"Bearer {UPSTREAM_KEY}"
    assert secret not in json.dumps(seen)
    assert emulator.stats()["tags"]["plain"]["last_body"] == {
        "model": "gpt-4o-mini",
        "messages": PROMPT,
        "max_tokens": 100,
    }


def test_chat_stream_without_usage_request_gets_no_usage_chunk(gateway: Gw, emulator) -> None:  # type: ignore[no-untyped-def]
    key_id, secret = gateway.key()
    client = oai(gateway, secret)
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=PROMPT, max_tokens=100, stream=True, extra_headers={"x-emulator-tag": "inject"}
    ) as resp:
        call_id = resp.headers["fairmeter-call-id"]
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    payloads = [line[6:] for line in lines]
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks and all(c["choices"] for c in chunks), "the usage-only chunk must not reach the client"
    assert all(c.get("usage") is None for c in chunks)
    # upstream was asked for usage; that is the only change to the request
    assert emulator.stats()["tags"]["inject"]["last_body"]["stream_options"] == {"include_usage": True}
    call = gateway.call(call_id)
    assert call["usage_status"] == "complete" and call["output_tokens"] > 0
    assert gateway.store.key_spend(key_id) == (to_nano(Decimal(call["cost_usd"])), 0)


def test_chat_stream_with_usage_request_keeps_the_usage_chunk(gateway: Gw) -> None:
    _, secret = gateway.key()
    chunks = list(
        oai(gateway, secret).chat.completions.create(
            model="gpt-4o-mini",
            messages=PROMPT,
            max_tokens=100,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    call = gateway.calls()[0]
    assert call["output_tokens"] == chunks[-1].usage.completion_tokens


def test_anthropic_plain_and_stream_accept_both_auth_headers(gateway: Gw) -> None:
    _, secret = gateway.key()
    bearer = ant(gateway, "", auth_token=secret, api_key=None)
    msg = bearer.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=PROMPT)  # type: ignore[arg-type]
    with ant(gateway, secret).messages.stream(model="claude-haiku-4-5", max_tokens=100, messages=PROMPT) as s:  # type: ignore[arg-type]
        final = s.get_final_message()
    calls = {c["stream"]: c for c in gateway.calls()}
    assert calls[False]["output_tokens"] == msg.usage.output_tokens
    assert calls[True]["output_tokens"] == final.usage.output_tokens
    assert calls[True]["usage_status"] == "complete"


def test_responses_plain_and_stream(gateway: Gw) -> None:
    _, secret = gateway.key()
    client = oai(gateway, secret)
    r = client.responses.create(model="gpt-4.1", input="hello", max_output_tokens=50)
    events = list(client.responses.create(model="gpt-4.1", input="hello", max_output_tokens=50, stream=True))
    assert events[-1].type == "response.completed"
    calls = {c["stream"]: c for c in gateway.calls()}
    assert r.usage is not None and calls[False]["output_tokens"] == r.usage.output_tokens
    assert calls[True]["usage_status"] == "complete" and calls[True]["api"] == "responses"


def test_count_tokens_and_models_are_free(gateway: Gw) -> None:
    key_id, secret = gateway.key()
    counted = ant(gateway, secret).messages.count_tokens(model="claude-haiku-4-5", messages=PROMPT)  # type: ignore[arg-type]
    assert counted.input_tokens > 0
    models = oai(gateway, secret).models.list()
    assert any(m.id == "gpt-4o-mini" for m in models)
    assert gateway.store.key_spend(key_id) == (0, 0)


def test_the_model_list_answers_head_as_get_without_a_body(gateway: Gw) -> None:
    """HEAD /v1/models: the status and headers a GET gets (its length included), no body, nothing charged."""
    key_id, secret = gateway.key()
    answers = {}
    for method in ("GET", "HEAD"):
        conn = http.client.HTTPConnection("127.0.0.1", gateway.server.port, timeout=10)
        try:
            conn.request(method, "/v1/models", headers={"authorization": f"Bearer {secret}"})
            resp = conn.getresponse()
            answers[method] = (
                resp.status,
                resp.getheader("content-length"),
                resp.read(),
                resp.getheader("fairmeter-call-id"),
            )
        finally:
            conn.close()
    get, head = answers["GET"], answers["HEAD"]
    assert get[0] == head[0] == 200
    assert get[1] == head[1] == str(len(get[2])) and b"gpt-4o-mini" in get[2]
    assert head[2] == b""
    assert head[3] is not None and head[3].startswith("call_") and head[3] != get[3]
    assert gateway.store.key_spend(key_id) == (0, 0)
    conn = http.client.HTTPConnection("127.0.0.1", gateway.server.port, timeout=10)
    try:  # HEAD is authenticated as GET is
        conn.request("HEAD", "/v1/models", headers={"authorization": "Bearer fm-nope"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (401, b"")
    finally:
        conn.close()


def _head(origin: str, path: str, auth: str, body: dict[str, object]) -> tuple[int, list[str], dict[str, str]]:
    """A raw POST: status, the header names in order (lower-cased, repeats kept), and the headers."""
    host, port = origin.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        headers = {"authorization": f"Bearer {auth}", "content-type": "application/json"}
        conn.request("POST", path, body=json.dumps(body), headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status, [k.lower() for k, _ in resp.getheaders()], {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def test_the_response_headers_are_the_providers_plus_the_call_id(gateway: Gw, emulator) -> None:  # type: ignore[no-untyped-def]
    """Same header names as the provider's answer, in its order (its Date and Server, not the gateway's), plus
    fairmeter-call-id; fairmeter's own answers carry a Date too."""
    _, secret = gateway.key()
    for stream in (False, True):
        body = {"model": "gpt-4o-mini", "messages": PROMPT, "max_tokens": 20, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        d_status, direct, _ = _head(emulator.origin, "/v1/chat/completions", UPSTREAM_KEY, body)
        g_status, through, _ = _head(gateway.origin, "/v1/chat/completions", secret, body)
        assert d_status == g_status == 200
        drop = {"content-length", "transfer-encoding"}  # the framing is the gateway's own
        assert [h for h in through if h not in drop] == [h for h in direct if h not in drop] + ["fairmeter-call-id"]
        assert "server" not in through or "server" in direct
    status, names, headers = _head(gateway.origin, "/v1/chat/completions", "fm-wrong", {"model": "gpt-4o-mini"})
    assert status == 401 and names.count("date") == 1 and headers["date"].endswith(" GMT")


def test_a_response_without_a_date_gets_one_and_a_dated_one_keeps_the_providers() -> None:
    from types import SimpleNamespace
    from typing import cast

    from fairmeter.gateway.http_client import Response
    from fairmeter.gateway.upstream import response_headers

    def names(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return response_headers(cast(Response, SimpleNamespace(raw_headers=raw)), "call_x", keep_length=False)

    undated = names([(b"Content-Type", b"application/json"), (b"Content-Length", b"2")])
    assert [k for k, _ in undated] == [b"content-type", b"date", b"fairmeter-call-id"]
    assert undated[1][1].endswith(b" GMT")
    old = b"Mon, 01 Jan 2001 00:00:00 GMT"
    dated = names([(b"Date", old), (b"Server", b"cloudflare"), (b"Connection", b"keep-alive")])
    assert dated == [(b"date", old), (b"server", b"cloudflare"), (b"fairmeter-call-id", b"call_x")]
