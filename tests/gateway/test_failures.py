"""The failures users have been billed for, each through the real gateway."""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import socket
import time
from decimal import Decimal

import anthropic
import httpx2 as httpx
import openai
import pytest
from tests.conftest import Gw
from tests.gateway.test_metering import PROMPT, ant, oai

from fairmeter.money import NANO_PER_USD

pytest_plugins = ("tests.pg",)


def tag_stats(emulator, tag: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return emulator.stats()["tags"].get(tag, {"requests": 0})  # type: ignore[no-any-return]


@pytest.mark.parametrize("status", [400, 401, 429, 500, 529])
def test_upstream_errors_cost_nothing(gateway: Gw, emulator, status: int) -> None:  # type: ignore[no-untyped-def]
    key_id, secret = gateway.key()
    tag = f"err-{status}"
    with pytest.raises(anthropic.APIStatusError) as err:
        ant(gateway, secret).messages.create(
            model="claude-haiku-4-5",
            max_tokens=100,
            messages=PROMPT,  # type: ignore[arg-type]
            extra_headers={"x-emulator-error": str(status), "x-emulator-tag": tag},
        )
    assert err.value.status_code == status
    call = gateway.call(err.value.response.headers["fairmeter-call-id"])
    assert call["status"] == "upstream_error" and call["upstream_status"] == status
    assert call["billed_usd"] == "0" and call["usage_status"] == "error"
    assert gateway.store.key_spend(key_id) == (0, 0)
    # never retried by the gateway (a 500 could have been billed)
    assert tag_stats(emulator, tag)["requests"] == 1


def test_connection_reset_costs_nothing(gateway: Gw) -> None:
    key_id, secret = gateway.key()
    with pytest.raises(openai.APIStatusError) as err:
        oai(gateway, secret).chat.completions.create(
            model="gpt-4o-mini",
            messages=PROMPT,
            max_tokens=50,
            extra_headers={"x-emulator-reset": "1"},  # type: ignore[arg-type]
        )
    assert err.value.status_code == 502
    assert gateway.spend(key_id) == (0, 0)


def _stream_until_overloaded(gateway: Gw, secret: str, after_events: int) -> None:
    """An Anthropic stream that ends in an overloaded_error after ``after_events`` events: the SDK raises."""
    with (
        pytest.raises(anthropic.APIStatusError),
        ant(gateway, secret).messages.stream(
            model="claude-haiku-4-5",
            max_tokens=100,
            messages=PROMPT,  # type: ignore[arg-type]
            extra_headers={"x-emulator-overload-after": str(after_events)},
        ) as s,
    ):
        s.get_final_message()


def test_overload_before_message_start_costs_nothing(gateway: Gw) -> None:
    key_id, secret = gateway.key()
    _stream_until_overloaded(gateway, secret, 0)
    call = gateway.calls()[0]
    assert call["usage_status"] == "error" and call["billed_usd"] == "0"
    assert gateway.store.key_spend(key_id) == (0, 0)


def test_overload_after_message_start_bills_what_was_delivered(gateway: Gw) -> None:
    key_id, secret = gateway.key()
    _stream_until_overloaded(gateway, secret, 6)
    call = gateway.calls()[0]
    assert call["usage_status"] == "partial" and call["estimated"] is True
    # The SDK raises on the error event and hangs up; which side the gateway notices first is a race.
    assert call["status"] in ("upstream_cut", "client_disconnected")
    assert Decimal(call["billed_usd"]) > 0
    assert gateway.store.key_spend(key_id)[0] == int(Decimal(call["billed_usd"]) * NANO_PER_USD)


def test_openai_stream_cut_before_usage_is_estimated_not_free(gateway: Gw) -> None:
    _, secret = gateway.key()
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for _ in oai(gateway, secret).chat.completions.create(
            model="gpt-4o-mini",
            messages=PROMPT,  # type: ignore[arg-type]
            max_tokens=100,
            stream=True,
            extra_headers={"x-emulator-cut-after": "4"},
        ):
            pass
    call = gateway.calls()[0]
    assert call["status"] == "upstream_cut" and call["usage_status"] == "unknown"
    assert call["cost_usd"] is None and call["estimated"] is True
    assert Decimal(call["billed_usd"]) > 0
    assert Decimal(call["billed_usd"]) <= Decimal(call["reserved_usd"])


def test_client_disconnect_mid_stream_stops_upstream_and_bills_what_was_generated(gateway: Gw, emulator) -> None:  # type: ignore[no-untyped-def]
    _, secret = gateway.key()
    tag = "disconnect"
    body = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 400, "messages": PROMPT, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", int(gateway.origin.rsplit(":", 1)[1])))
    sock.sendall(
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        + f"x-api-key: {secret}\r\nx-emulator-chunks: 200\r\nx-emulator-chunk-delay-ms: 20\r\n".encode()
        + f"x-emulator-tag: {tag}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    received = b""
    while received.count(b"content_block_delta") < 3:
        received += sock.recv(65536)
    sock.close()
    deadline = time.monotonic() + 5
    while tag_stats(emulator, tag).get("client_disconnected", 0) == 0:
        assert time.monotonic() < deadline, "the gateway did not close the upstream stream"
        time.sleep(0.02)
    stats = tag_stats(emulator, tag)
    assert stats["chunks_sent"] < 100  # generation stopped long before the 200 chunks
    call = gateway.calls()[0]
    assert call["status"] == "client_disconnected" and call["estimated"] is True
    assert 0 < Decimal(call["billed_usd"]) < Decimal(call["reserved_usd"])
    assert call["output_tokens"] is not None and call["output_tokens"] < 100


def test_client_timeout_on_plain_call_then_retry_gets_stored_response_charged_once(gateway: Gw, emulator) -> None:  # type: ignore[no-untyped-def]
    key_id, secret = gateway.key()
    slow = oai(gateway, secret, timeout=0.3)
    headers = {"Idempotency-Key": "retry-after-timeout", "x-emulator-latency-ms": "800", "x-emulator-tag": "slow"}
    with pytest.raises(openai.APITimeoutError):
        slow.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=50, extra_headers=headers)  # type: ignore[arg-type]
    # The SDK's own retries (409 while in flight, honouring retry-after) end with the stored response.
    patient = oai(gateway, secret, max_retries=5)
    again = patient.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=PROMPT,
        max_tokens=50,
        extra_headers=headers,  # type: ignore[arg-type]
    )
    assert again.headers.get("fairmeter-replay-of")
    first = gateway.call(again.headers["fairmeter-replay-of"])
    assert first["status"] == "ok" and Decimal(first["billed_usd"]) > 0
    assert tag_stats(emulator, "slow")["requests"] == 1
    spent, held = gateway.store.key_spend(key_id)
    assert held == 0 and spent == int(Decimal(first["billed_usd"]) * NANO_PER_USD)
    assert again.parse().usage.completion_tokens == first["output_tokens"]  # type: ignore[union-attr]


def test_in_flight_repeat_gets_409_with_retry_after(gateway: Gw) -> None:
    _, secret = gateway.key()
    port = int(gateway.origin.rsplit(":", 1)[1])
    body = json.dumps({"model": "gpt-4o-mini", "messages": PROMPT, "max_tokens": 20})
    headers = {
        "Authorization": f"Bearer {secret}",
        "content-type": "application/json",
        "Idempotency-Key": "k409",
        "x-emulator-latency-ms": "500",
    }
    first = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    first.request("POST", "/v1/chat/completions", body=body, headers=headers)
    time.sleep(0.15)
    second = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    second.request("POST", "/v1/chat/completions", body=body, headers=headers)
    r2 = second.getresponse()
    payload = json.loads(r2.read())
    assert r2.status == 409 and r2.getheader("retry-after") == "1"
    assert r2.getheader("x-should-retry") is None
    assert payload["error"]["code"] == "idempotency_key_in_use"
    assert first.getresponse().status == 200
    first.close()
    second.close()


def test_repeat_of_a_settled_stream_replays_its_events_and_charges_nothing(gateway: Gw, emulator) -> None:  # type: ignore[no-untyped-def]
    key_id, secret = gateway.key()
    client = ant(gateway, secret)
    texts = []
    for _ in range(2):
        with client.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=100,
            messages=PROMPT,  # type: ignore[arg-type]
            extra_headers={"Idempotency-Key": "stream-1", "x-emulator-tag": "replay-stream"},
        ) as s:
            texts.append(s.get_final_text())
            gateway.call(s.response.headers["fairmeter-call-id"])  # wait until settled
    assert texts[0] == texts[1] and texts[0]
    assert tag_stats(emulator, "replay-stream")["requests"] == 1
    calls = gateway.calls()
    assert len(calls) == 2 and sum(Decimal(c["billed_usd"]) for c in calls) == Decimal(calls[1]["billed_usd"])
    assert gateway.store.key_spend(key_id)[0] == int(Decimal(calls[1]["billed_usd"]) * NANO_PER_USD)


def test_repeat_of_a_voided_call_is_forwarded_again(gateway: Gw, emulator) -> None:  # type: ignore[no-untyped-def]
    _, secret = gateway.key()
    client = oai(gateway, secret)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=PROMPT,  # type: ignore[arg-type]
            max_tokens=20,
            extra_headers={"Idempotency-Key": "v1", "x-emulator-error": "500", "x-emulator-tag": "void"},
        )
    ok = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=PROMPT,
        max_tokens=20,
        extra_headers={"Idempotency-Key": "v1", "x-emulator-tag": "void"},  # type: ignore[arg-type]
    )
    assert ok.choices and tag_stats(emulator, "void")["requests"] == 2


def test_overrun_is_posted_flagged_and_listed_never_clamped(gateway: Gw) -> None:
    from fairmeter.verify import verify_store

    _, secret = gateway.key()
    huge = json.dumps({"prompt_tokens": 5_000_000})
    raw = oai(gateway, secret).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=PROMPT,
        max_tokens=20,
        extra_headers={"x-emulator-usage": huge},  # type: ignore[arg-type]
    )
    call = gateway.call(raw.headers["fairmeter-call-id"])
    assert Decimal(call["billed_usd"]) > Decimal(call["reserved_usd"])
    assert call["needs_reconciliation"] and call["overrun_usd"]
    result = gateway.store.run(verify_store)
    assert result["balanced"]
    assert [p["kind"] for p in result["problems"]] == ["overrun"]


def test_two_hundred_concurrent_calls_never_pass_the_cap(gateway: Gw) -> None:
    # One call's hold: prompt bound + 200 output tokens at claude-haiku-4-5 rates; cap fits about ten.
    _, probe = gateway.key()
    with pytest.raises(anthropic.APIStatusError) as err:
        ant(gateway, probe).messages.create(
            model="claude-haiku-4-5",
            max_tokens=200,
            messages=PROMPT,
            extra_headers={"x-emulator-error": "400"},  # type: ignore[arg-type]
        )
    hold = int(Decimal(gateway.call(err.value.response.headers["fairmeter-call-id"])["reserved_usd"]) * NANO_PER_USD)
    cap = hold * 10 + hold // 2
    key_id, secret = gateway.key(max_spend_nano=cap)
    client = ant(gateway, secret, timeout=30)

    def one(_: int) -> str:
        try:
            client.messages.create(model="claude-haiku-4-5", max_tokens=200, messages=PROMPT)  # type: ignore[arg-type]
            return "ok"
        except anthropic.APIStatusError as exc:
            assert exc.status_code == 402, exc
            return "refused"

    with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(one, range(200)))
    spent, held = gateway.spend(key_id)
    assert held == 0
    assert spent <= cap
    assert results.count("ok") >= 10
    assert results.count("refused") > 0
    # each refusal happened when the room left was smaller than the hold
    for c in gateway.calls():
        if c["key_id"] == key_id and c["status"] == "refused":
            assert c["error_code"] == "budget_exceeded"


def _api(origin: str, secret: str, path: str) -> dict:  # type: ignore[type-arg]
    with httpx.Client(base_url=origin, headers={"Authorization": f"Bearer {secret}"}) as http:
        reply = http.get(path)
        assert reply.status_code == 200, reply.text
        return reply.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_repeat_right_after_the_response_gets_the_replay_not_a_409(
    emulator,
    tmp_path,
    request: pytest.FixtureRequest,
    backend: str,  # type: ignore[no-untyped-def]
) -> None:
    """The settlement follows the response; a repeat with the same Idempotency-Key that arrives before it has
    committed waits for it, and gets the stored response (charged nothing), on either backend."""
    from tests.conftest import gateway_config

    from fairmeter.gateway.server import GatewayServer
    from fairmeter.store import open_store

    url = f"sqlite:///{tmp_path / 'fm.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")

    async def new_key() -> str:
        store = open_store(url, time.time())
        try:
            return (await store.create_key("k", None, False, time.time()))[1]
        finally:
            await store.close()

    secret = asyncio.run(new_key())
    with GatewayServer(gateway_config(emulator, tmp_path / "fm.db", database_url=url)) as server:
        store = server.state.store
        finish = store.finish_call

        async def slow_finish(*args, **kwargs):  # type: ignore[no-untyped-def]
            await asyncio.sleep(0.3)  # hold the settlement open: the repeat arrives before it commits
            return await finish(*args, **kwargs)

        store.finish_call = slow_finish  # type: ignore[method-assign]
        headers = {"Idempotency-Key": f"right-after-{backend}"}
        with openai.OpenAI(base_url=server.openai_base_url, api_key=secret, max_retries=0) as client:
            first, again = (
                client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=PROMPT, max_tokens=20, extra_headers=headers
                )
                for _ in range(2)
            )
        assert again.status_code == 200
        assert again.headers["fairmeter-replay-of"] == first.headers["fairmeter-call-id"]
        assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
        record = _api(server.origin, secret, f"/fairmeter/v1/calls/{first.headers['fairmeter-call-id']}")
        budget = _api(server.origin, secret, "/fairmeter/v1/limits")["key"]
    assert record["status"] == "ok" and Decimal(record["billed_usd"]) > 0
    assert (budget["spent_usd"], budget["held_usd"]) == (record["billed_usd"], "0")
