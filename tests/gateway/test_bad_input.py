"""Bad input through the real gateway: refused with the provider's error shape, never forwarded, never charged.

Every refusal is checked the same way (`assert_refused`): HTTP status, fairmeter's stable code, the
provider's error shape, a sentence naming the offending value, the ``fairmeter-call-id`` and retry
headers, zero upstream requests for the request's ``x-emulator-tag``, an untouched ledger account, and
exactly one call record with the right status and code.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from tests.conftest import Gw, gateway_config

from fairmeter.gateway.server import GatewayServer
from fairmeter.money import usd_str
from fairmeter.testing import EmulatorServer

PROMPT = [{"role": "user", "content": "Say something about prime numbers."}]


@dataclass(frozen=True)
class RouteInfo:
    path: str
    provider: str
    good: dict[str, Any]
    limit_field: str


ROUTES = {
    "chat": RouteInfo(
        "/v1/chat/completions", "openai", {"model": "gpt-4o-mini", "messages": PROMPT, "max_tokens": 50}, "max_tokens"
    ),
    "responses": RouteInfo(
        "/v1/responses", "openai", {"model": "gpt-4.1", "input": "hello", "max_output_tokens": 50}, "max_output_tokens"
    ),
    "messages": RouteInfo(
        "/v1/messages", "anthropic", {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": PROMPT}, "max_tokens"
    ),
}
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "request_too_large",
}
ANY_PARAM = "<not checked>"
_DOLLARS = re.compile(r"\$(\d+(?:\.\d+)?)")


# ---------------------------------------------------------------------------------------------- helpers


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any
    elapsed: float


def new_tag() -> str:
    return "bad-" + uuid.uuid4().hex


def post(
    gw: Gw,
    path: str,
    body: bytes | Iterable[bytes] | object,
    headers: dict[str, str] | None = None,
    *,
    secret: str | None = None,
    chunked: bool = False,
) -> Reply:
    """One raw HTTP POST; ``body`` is sent as is when bytes (or an iterable of chunks), else as JSON."""
    hdrs = {"content-type": "application/json", **(headers or {})}
    if secret is not None:
        hdrs["authorization"] = f"Bearer {secret}"
    if not isinstance(body, bytes) and not chunked:
        body = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", gw.server.port, timeout=10)
    t0 = time.monotonic()
    try:
        conn.request("POST", path, body=body, headers=hdrs, encode_chunked=chunked)  # type: ignore[arg-type]
        resp = conn.getresponse()
        raw = resp.read()
        got = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    return Reply(resp.status, got, json.loads(raw) if raw else None, time.monotonic() - t0)


def error_of(provider: str, reply: Reply) -> dict[str, Any]:
    """The error object, after checking the provider's exact error shape."""
    body = reply.body
    assert isinstance(body, dict), body
    if provider == "anthropic":
        assert set(body) == {"type", "error"}, body
        assert body["type"] == "error"
        err = body["error"]
        assert set(err) == {"type", "message", "code"}, err
        assert err["type"] == ANTHROPIC_TYPES[reply.status]
    else:
        assert set(body) == {"error"}, body
        err = body["error"]
        assert set(err) == {"message", "type", "param", "code"}, err
        assert isinstance(err["type"], str) and err["type"]
    assert isinstance(err, dict)
    return err


def assert_refused(
    gw: Gw,
    emulator: EmulatorServer,
    route: str,
    reply: Reply,
    *,
    status: int,
    code: str,
    tag: str,
    key_id: str | None,
    mentions: Iterable[str] = (),
    param: str | None = ANY_PARAM,
    charged: tuple[int, int] = (0, 0),
    total: int | None = 1,
) -> dict[str, Any]:
    """Every check a refusal must pass; returns the call record.

    ``charged`` is what the key's account must still show (spent, held); ``total`` the number of call
    records the gateway must hold in all (None: not checked, other calls ran in the test).
    """
    provider = ROUTES[route].provider
    assert reply.status == status, reply.body
    err = error_of(provider, reply)
    assert err["code"] == code
    message = err["message"]
    assert isinstance(message, str) and len(message) > 15 and "\n" not in message
    assert message.endswith("."), f"not a sentence: {message!r}"
    for text in mentions:
        assert text in message, f"{text!r} not in {message!r}"
    if param != ANY_PARAM and provider == "openai":
        assert err["param"] == param
    call_id = reply.headers.get("fairmeter-call-id")
    assert call_id and call_id.startswith("call_")
    if status == 409:
        assert reply.headers.get("retry-after") == "1"
        assert reply.headers.get("x-should-retry") != "false"
    else:
        assert reply.headers.get("x-should-retry") == "false"
        assert "retry-after" not in reply.headers
    assert emulator.stats()["tags"].get(tag) is None, "a refused request reached the upstream"
    if key_id is not None:
        assert gw.store.key_spend(key_id) == charged
    records = [c for c in gw.calls() if c["id"] == call_id]
    assert len(records) == 1
    record = records[0]
    expected_status = (
        "refused" if code in ("invalid_api_key", "budget_exceeded", "idempotency_key_in_use") else "bad_request"
    )
    assert record["status"] == expected_status
    assert record["error_code"] == code
    assert record["message"] == message
    assert record["billed_usd"] == "0" and record["cost_usd"] is None
    assert record["api"] == route and record["provider"] == provider
    assert not [t for t in gw.store.transfers() if t.call_id == call_id], "a refused call must move no money"
    if total is not None:
        assert len(gw.calls()) == total
    return record


def in_flight(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run ``fn`` in a thread (a slow call that keeps its hold); the list gets its result or exception."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as exc:
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def body_for(route: str, **changes: Any) -> dict[str, Any]:
    body = dict(ROUTES[route].good)
    for k, v in changes.items():
        if v is _DROP:
            body.pop(k, None)
        else:
            body[k] = v
    return body


_DROP = object()


# ---------------------------------------------------------------------------------------------- the control


@pytest.mark.parametrize("route", ROUTES)
def test_a_good_request_is_forwarded_and_tag_counted(gateway: Gw, emulator: EmulatorServer, route: str) -> None:
    """The control for every 'never forwarded' check below: a good tagged request is counted upstream."""
    key_id, secret = gateway.key()
    tag = new_tag()
    reply = post(gateway, ROUTES[route].path, ROUTES[route].good, {"x-emulator-tag": tag}, secret=secret)
    assert reply.status == 200, reply.body
    assert emulator.stats()["tags"][tag]["requests"] == 1
    spent, held = gateway.spend(key_id)
    assert spent > 0 and held == 0
    assert gateway.call(reply.headers["fairmeter-call-id"])["status"] == "ok"


# ---------------------------------------------------------------------------------------------- malformed bodies

Case = tuple[str, str, Any, str | None, tuple[str, ...]]  # route, id, body, param, mentions


def _malformed_cases() -> Iterator[Case]:
    for route in ROUTES:
        lim = ROUTES[route].limit_field
        yield route, "invalid-json", b'{"model": "x", "messages": [', None, ("JSON",)
        yield route, "truncated-json", b"{", None, ("JSON",)
        yield route, "empty-body", b"", None, ("JSON",)
        yield route, "not-utf8", b'{"model": "\xff"}', None, ("JSON",)
        yield route, "json-array", b'[{"model": "gpt-4o-mini"}, 2]', None, ("JSON object", '[{"model"')
        yield route, "json-string", b'"hello"', None, ("JSON object", '"hello"')
        yield route, "missing-model", body_for(route, model=_DROP), "model", ("model",)
        yield route, "model-int", body_for(route, model=42), "model", ("model", "42")
        yield route, "model-list", body_for(route, model=["gpt-4o-mini"]), "model", ("model", '["gpt-4o-mini"]')
        yield route, "model-empty", body_for(route, model=""), "model", ("model", '""')
        yield route, "limit-negative", body_for(route, **{lim: -1}), lim, (lim, "-1")
        yield route, "limit-zero", body_for(route, **{lim: 0}), lim, (lim, "0")
        yield route, "limit-absurd", body_for(route, **{lim: 10_000_001}), lim, (lim, "10,000,001")
        yield route, "limit-huge", body_for(route, **{lim: 10**30}), lim, (lim, "1e+30")
        yield route, "limit-float", body_for(route, **{lim: 1.5}), lim, (lim, "1.5")
        yield route, "limit-integral-float", body_for(route, **{lim: 100.0}), lim, (lim, "100.0")
        yield route, "limit-bool", body_for(route, **{lim: True}), lim, (lim, "true")
        yield route, "limit-string", body_for(route, **{lim: "100"}), lim, (lim, '"100"')
        yield route, "stream-string", body_for(route, stream="yes"), "stream", ("stream", '"yes"')
        yield route, "stream-int", body_for(route, stream=1), "stream", ("stream", "1")
    yield (
        "chat",
        "max-completion-negative",
        body_for("chat", max_completion_tokens=-5),
        "max_completion_tokens",
        (
            "max_completion_tokens",
            "-5",
        ),
    )
    yield "chat", "messages-string", body_for("chat", messages="hi"), "messages", ("messages", '"hi"')
    yield "chat", "messages-object", body_for("chat", messages={"role": "user"}), "messages", ("messages",)
    yield "chat", "messages-empty", body_for("chat", messages=[]), "messages", ("messages", "[]")
    yield "chat", "messages-missing", body_for("chat", messages=_DROP), "messages", ("messages",)
    yield "chat", "message-not-object", body_for("chat", messages=["hi"]), "messages[0]", ("messages[0]", '"hi"')
    yield "chat", "n-zero", body_for("chat", n=0), "n", ("n must", "0")
    yield "chat", "n-too-many", body_for("chat", n=129), "n", ("n must", "129", "128")
    yield "chat", "n-float", body_for("chat", n=2.5), "n", ("n must", "2.5")
    yield "chat", "n-bool", body_for("chat", n=True), "n", ("n must", "true")
    yield "responses", "input-int", body_for("responses", input=5), "input", ("input", "5")
    yield "responses", "input-missing", body_for("responses", input=_DROP), "input", ("input",)
    yield (
        "responses",
        "instructions-list",
        body_for("responses", instructions=["x"]),
        "instructions",
        (
            "instructions",
            '["x"]',
        ),
    )
    yield "messages", "messages-string", body_for("messages", messages="hi"), "messages", ("messages", '"hi"')
    yield "messages", "messages-missing", body_for("messages", messages=_DROP), "messages", ("messages",)
    yield "messages", "max-tokens-missing", body_for("messages", max_tokens=_DROP), "max_tokens", ("max_tokens",)
    yield "messages", "system-int", body_for("messages", system=5), "system", ("system", "5")
    yield (
        "messages",
        "thinking-budget-zero",
        body_for("messages", thinking={"type": "enabled", "budget_tokens": 0}),
        "thinking.budget_tokens",
        ("budget_tokens", "0"),
    )


MALFORMED = list(_malformed_cases())


@pytest.mark.parametrize(
    ("route", "body", "param", "mentions"),
    [c[:1] + c[2:] for c in MALFORMED],
    ids=[f"{c[0]}-{c[1]}" for c in MALFORMED],
)
def test_malformed_body_is_refused(
    gateway: Gw, emulator: EmulatorServer, route: str, body: Any, param: str | None, mentions: tuple[str, ...]
) -> None:
    key_id, secret = gateway.key()
    tag = new_tag()
    reply = post(gateway, ROUTES[route].path, body, {"x-emulator-tag": tag}, secret=secret)
    record = assert_refused(
        gateway, emulator, route, reply, status=400, code="invalid_request", tag=tag, key_id=key_id,
        mentions=mentions, param=param,
    )  # fmt: skip
    assert record["key_id"] == key_id


@pytest.mark.parametrize(
    ("method", "path", "provider", "allow"),
    [
        ("GET", "/v1/chat/completions", "openai", "POST"),
        ("PUT", "/v1/responses", "openai", "POST"),
        ("GET", "/v1/messages", "anthropic", "POST"),
        ("DELETE", "/v1/messages/count_tokens", "anthropic", "POST"),
        ("POST", "/v1/models", "openai", "GET, HEAD"),
        ("POST", "/healthz", "openai", "GET, HEAD"),
    ],
)
def test_a_route_asked_with_another_method_is_405(
    gateway: Gw, emulator: EmulatorServer, method: str, path: str, provider: str, allow: str
) -> None:
    key_id, secret = gateway.key()
    tag = new_tag()
    body = json.dumps(ROUTES["messages" if provider == "anthropic" else "chat"].good).encode()
    conn = http.client.HTTPConnection("127.0.0.1", gateway.server.port, timeout=10)
    try:
        headers = {"authorization": f"Bearer {secret}", "x-emulator-tag": tag, "content-type": "application/json"}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(resp.read()), 0.0)
    finally:
        conn.close()
    assert reply.status == 405
    err = error_of(provider, reply)
    assert err["code"] == "method_not_allowed"
    assert err["message"] == f"{path} takes {allow.replace(', ', ' or ')}, not {method}."
    assert reply.headers["allow"] == allow
    assert reply.headers["x-should-retry"] == "false"
    assert reply.headers["fairmeter-call-id"].startswith("call_")
    assert emulator.stats()["tags"].get(tag) is None, "a refused request reached the upstream"
    assert gateway.store.key_spend(key_id) == (0, 0)
    assert gateway.calls() == [] and gateway.store.transfers() == []


def test_the_health_check_answers_get_and_head(gateway: Gw) -> None:
    """GET and HEAD answer 200 (HEAD without a body); any other method is the 405 above."""
    for method, body in (("GET", b'{"ok":true}'), ("HEAD", b"")):
        conn = http.client.HTTPConnection("127.0.0.1", gateway.server.port, timeout=10)
        try:
            conn.request(method, "/healthz")
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, body)
        finally:
            conn.close()


def test_background_responses_are_refused(gateway: Gw, emulator: EmulatorServer) -> None:
    key_id, secret = gateway.key()
    tag = new_tag()
    reply = post(
        gateway, "/v1/responses", body_for("responses", background=True), {"x-emulator-tag": tag}, secret=secret
    )
    assert_refused(
        gateway, emulator, "responses", reply, status=400, code="invalid_request", tag=tag, key_id=key_id,
        mentions=("background",), param="background",
    )  # fmt: skip


def test_background_false_is_accepted(gateway: Gw, emulator: EmulatorServer) -> None:
    _, secret = gateway.key()
    tag = new_tag()
    reply = post(
        gateway, "/v1/responses", body_for("responses", background=False), {"x-emulator-tag": tag}, secret=secret
    )
    assert reply.status == 200, reply.body
    assert emulator.stats()["tags"][tag]["requests"] == 1


@pytest.mark.parametrize("route", ROUTES)
def test_idempotency_key_too_long_is_refused(gateway: Gw, emulator: EmulatorServer, route: str) -> None:
    key_id, secret = gateway.key()
    tag = new_tag()
    headers = {"x-emulator-tag": tag, "idempotency-key": "k" * 300}
    reply = post(gateway, ROUTES[route].path, ROUTES[route].good, headers, secret=secret)
    assert_refused(
        gateway, emulator, route, reply, status=400, code="invalid_request", tag=tag, key_id=key_id,
        mentions=("Idempotency-Key", "300", "255"), param="Idempotency-Key",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- oversized bodies


@pytest.fixture
def small_gateway(emulator: EmulatorServer, tmp_path: Path) -> Iterator[Gw]:
    with GatewayServer(gateway_config(emulator, tmp_path / "small.db", max_body_bytes=1000)) as server:
        yield Gw(server)


@pytest.mark.parametrize("route", ROUTES)
def test_oversized_body_is_refused_from_content_length_before_it_is_read(
    small_gateway: Gw, emulator: EmulatorServer, route: str
) -> None:
    gw = small_gateway
    key_id, secret = gw.key()
    tag = new_tag()
    conn = http.client.HTTPConnection("127.0.0.1", gw.server.port, timeout=5)
    try:
        conn.putrequest("POST", ROUTES[route].path)
        for name, value in {
            "content-type": "application/json",
            "content-length": "5000",
            "authorization": f"Bearer {secret}",
            "x-emulator-tag": tag,
        }.items():
            conn.putheader(name, value)
        conn.endheaders()
        # Send none of the 5,000 bytes: an answer proves the gateway decided from Content-Length alone
        # (waiting for the body would hit the 5 s socket timeout).
        resp = conn.getresponse()
        raw = resp.read()
        reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(raw), 0.0)
    finally:
        conn.close()
    assert_refused(
        gw, emulator, route, reply, status=413, code="request_too_large", tag=tag, key_id=key_id,
        mentions=("5,000", "1,000"),
    )  # fmt: skip


@pytest.mark.parametrize("route", ROUTES)
def test_oversized_chunked_body_is_refused(small_gateway: Gw, emulator: EmulatorServer, route: str) -> None:
    gw = small_gateway
    key_id, secret = gw.key()
    tag = new_tag()
    padded = body_for(route, metadata={"pad": "x" * 1500})
    raw = json.dumps(padded).encode()
    chunks = [raw[i : i + 400] for i in range(0, len(raw), 400)]
    reply = post(gw, ROUTES[route].path, chunks, {"x-emulator-tag": tag}, secret=secret, chunked=True)
    assert_refused(
        gw, emulator, route, reply, status=413, code="request_too_large", tag=tag, key_id=key_id, mentions=("1,000",)
    )


@pytest.mark.parametrize("route", ROUTES)
def test_body_just_under_the_limit_is_accepted(small_gateway: Gw, emulator: EmulatorServer, route: str) -> None:
    gw = small_gateway
    _, secret = gw.key()
    tag = new_tag()
    body = ROUTES[route].good
    reply = post(gw, ROUTES[route].path, body, {"x-emulator-tag": tag}, secret=secret)
    assert len(json.dumps(body)) < 1000
    assert reply.status == 200, reply.body
    assert emulator.stats()["tags"][tag]["requests"] == 1


# ---------------------------------------------------------------------------------------------- keys

AUTH_STYLES = ("bearer", "x-api-key")


def _auth(style: str, secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"} if style == "bearer" else {"x-api-key": secret}


@pytest.mark.parametrize("route", ROUTES)
def test_missing_key_is_refused(gateway: Gw, emulator: EmulatorServer, route: str) -> None:
    tag = new_tag()
    reply = post(gateway, ROUTES[route].path, ROUTES[route].good, {"x-emulator-tag": tag})
    record = assert_refused(
        gateway, emulator, route, reply, status=401, code="invalid_api_key", tag=tag, key_id=None,
        mentions=("Authorization: Bearer", "x-api-key"),
    )  # fmt: skip
    assert record["key_id"] is None


@pytest.mark.parametrize("style", AUTH_STYLES)
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("secret", "mentions"),
    [("fm-thisKeyDoesNotExist0123456789", ("no such key",)), ("sk-not-a-fairmeter-key", ("fm-",))],
    ids=["unknown-fm-key", "foreign-key"],
)
def test_wrong_key_is_refused(
    gateway: Gw, emulator: EmulatorServer, route: str, style: str, secret: str, mentions: tuple[str, ...]
) -> None:
    real_id, _ = gateway.key()
    tag = new_tag()
    reply = post(gateway, ROUTES[route].path, ROUTES[route].good, {"x-emulator-tag": tag, **_auth(style, secret)})
    record = assert_refused(
        gateway, emulator, route, reply, status=401, code="invalid_api_key", tag=tag, key_id=real_id, mentions=mentions
    )
    assert secret not in reply.body.__repr__(), "the error must not echo the presented secret"
    assert record["key_id"] is None


@pytest.mark.parametrize("style", AUTH_STYLES)
@pytest.mark.parametrize("route", ROUTES)
def test_revoked_key_is_refused(gateway: Gw, emulator: EmulatorServer, route: str, style: str) -> None:
    key_id, secret = gateway.key()
    assert gateway.store.revoke_key(key_id, time.time())
    tag = new_tag()
    reply = post(gateway, ROUTES[route].path, ROUTES[route].good, {"x-emulator-tag": tag, **_auth(style, secret)})
    assert_refused(
        gateway, emulator, route, reply, status=401, code="invalid_api_key", tag=tag, key_id=key_id,
        mentions=(key_id, "revoked"),
    )  # fmt: skip


@pytest.mark.parametrize("style", AUTH_STYLES)
@pytest.mark.parametrize("route", ROUTES)
def test_both_auth_headers_work_with_a_good_key(gateway: Gw, emulator: EmulatorServer, route: str, style: str) -> None:
    """The control for the key refusals: the same request with a live key in the same header passes."""
    key_id, secret = gateway.key()
    tag = new_tag()
    reply = post(gateway, ROUTES[route].path, ROUTES[route].good, {"x-emulator-tag": tag, **_auth(style, secret)})
    assert reply.status == 200, reply.body
    assert emulator.stats()["tags"][tag]["requests"] == 1
    assert gateway.call(reply.headers["fairmeter-call-id"])["key_id"] == key_id


# ---------------------------------------------------------------------------------------------- models and bounds


@pytest.mark.parametrize("route", ROUTES)
def test_unknown_model_is_refused(gateway: Gw, emulator: EmulatorServer, route: str) -> None:
    key_id, secret = gateway.key()
    tag = new_tag()
    body = body_for(route, model="no-such-model-7b")
    reply = post(gateway, ROUTES[route].path, body, {"x-emulator-tag": tag}, secret=secret)
    record = assert_refused(
        gateway, emulator, route, reply, status=404, code="model_not_found", tag=tag, key_id=key_id,
        mentions=("no-such-model-7b",), param="model",
    )  # fmt: skip
    assert record["model"] == "no-such-model-7b"


UNBOUNDED = {
    "chat": ({"web_search_options": {}}, "web_search_options"),
    "responses": ({"previous_response_id": "resp_0123456789"}, "previous_response_id"),
    "messages": ({"container": "container_0123"}, "container"),
}


@pytest.mark.parametrize("route", ROUTES)
def test_unbounded_request_is_refused_without_max_request_usd(
    gateway: Gw, emulator: EmulatorServer, route: str
) -> None:
    key_id, secret = gateway.key()
    tag = new_tag()
    extra, field = UNBOUNDED[route]
    reply = post(gateway, ROUTES[route].path, body_for(route, **extra), {"x-emulator-tag": tag}, secret=secret)
    assert_refused(
        gateway, emulator, route, reply, status=400, code="unbounded_request", tag=tag, key_id=key_id,
        mentions=(field, "max_request_usd"),
    )  # fmt: skip


@pytest.fixture
def capped_gateway(emulator: EmulatorServer, tmp_path: Path) -> Iterator[Gw]:
    with GatewayServer(gateway_config(emulator, tmp_path / "capped.db", max_request_usd="0.25")) as server:
        yield Gw(server)


@pytest.mark.parametrize("without_input", [False, True], ids=["with-input", "previous-response-only"])
def test_unbounded_request_is_held_at_max_request_usd(
    capped_gateway: Gw, emulator: EmulatorServer, without_input: bool
) -> None:
    gw = capped_gateway
    key_id, secret = gw.key()
    tag = new_tag()
    body = body_for("responses", previous_response_id="resp_0123456789")
    if without_input:
        del body["input"]
    headers = {"x-emulator-tag": tag, "x-emulator-latency-ms": "600"}
    thread, out = in_flight(lambda: post(gw, "/v1/responses", body, headers, secret=secret))
    wait_for(lambda: gw.store.key_spend(key_id)[1] > 0)
    assert gw.store.key_spend(key_id) == (0, 250_000_000), "the hold must be exactly max_request_usd"
    thread.join(10)
    reply = out[0]
    assert isinstance(reply, Reply) and reply.status == 200, out
    assert emulator.stats()["tags"][tag]["requests"] == 1
    record = gw.call(reply.headers["fairmeter-call-id"])
    assert record["status"] == "ok" and record["reserved_usd"] == "0.25"
    spent, held = gw.store.key_spend(key_id)
    assert held == 0 and 0 < spent <= 250_000_000
    assert Decimal(record["billed_usd"]) * 10**9 == spent


def test_unbounded_request_held_at_max_request_usd_counts_against_the_key_cap(
    capped_gateway: Gw, emulator: EmulatorServer
) -> None:
    gw = capped_gateway
    key_id, secret = gw.key(max_spend_nano=100_000_000)  # $0.10 < max_request_usd $0.25
    tag = new_tag()
    body = body_for("responses", previous_response_id="resp_0123456789")
    reply = post(gw, "/v1/responses", body, {"x-emulator-tag": tag}, secret=secret)
    record = assert_refused(
        gw, emulator, "responses", reply, status=402, code="budget_exceeded", tag=tag, key_id=key_id,
        mentions=("$0.25", "$0.1"),
    )  # fmt: skip
    assert record["reserved_usd"] == "0.25"


# ---------------------------------------------------------------------------------------------- the spend cap

BIG_LIMIT = 200_000  # W of any of the three models at this output limit is far above the cap below


@pytest.mark.parametrize("route", ROUTES)
def test_call_over_the_cap_is_refused_with_every_amount(gateway: Gw, emulator: EmulatorServer, route: str) -> None:
    cap = 50_000_000  # $0.05
    key_id, secret = gateway.key(max_spend_nano=cap)
    info = ROUTES[route]
    first = post(gateway, info.path, info.good, secret=secret)
    assert first.status == 200, first.body
    spent, held = gateway.spend(key_id)
    assert spent > 0 and held == 0
    # A slow call keeps its hold while the refused one arrives, so "held" is not zero.
    slow_headers = {"x-emulator-latency-ms": "800"}
    thread, out = in_flight(lambda: post(gateway, info.path, info.good, slow_headers, secret=secret))
    wait_for(lambda: gateway.store.key_spend(key_id)[1] > 0)
    spent, held = gateway.store.key_spend(key_id)
    tag = new_tag()
    reply = post(
        gateway, info.path, body_for(route, **{info.limit_field: BIG_LIMIT}), {"x-emulator-tag": tag}, secret=secret
    )
    record = assert_refused(
        gateway, emulator, route, reply, status=402, code="budget_exceeded", tag=tag, key_id=key_id,
        charged=(spent, held), total=3,
    )  # fmt: skip
    amounts = _DOLLARS.findall(error_of(info.provider, reply)["message"])
    hold = Decimal(record["reserved_usd"])
    assert hold * 10**9 > cap - spent - held
    for amount in (usd_str(cap), usd_str(spent), usd_str(held), record["reserved_usd"], usd_str(cap - spent - held)):
        assert amount in amounts, f"${amount} missing from {amounts}"
    thread.join(10)
    assert isinstance(out[0], Reply) and out[0].status == 200
    assert gateway.spend(key_id)[1] == 0


@pytest.mark.parametrize("route", ROUTES)
def test_call_that_fits_the_cap_exactly_is_accepted(gateway: Gw, emulator: EmulatorServer, route: str) -> None:
    """The boundary: a cap equal to the call's hold W admits it; one nano-dollar less refuses it."""
    probe_id, probe_secret = gateway.key(max_spend_nano=1)
    info = ROUTES[route]
    probe = post(gateway, info.path, info.good, secret=probe_secret)
    assert probe.status == 402
    w = int(Decimal(gateway.call(probe.headers["fairmeter-call-id"])["reserved_usd"]) * 10**9)
    assert gateway.store.key_spend(probe_id) == (0, 0)
    _, short_secret = gateway.key(max_spend_nano=w - 1)
    assert post(gateway, info.path, info.good, secret=short_secret).status == 402
    _, exact_secret = gateway.key(max_spend_nano=w)
    ok = post(gateway, info.path, info.good, secret=exact_secret)
    assert ok.status == 200, ok.body


# ---------------------------------------------------------------------------------------------- 409 in flight


@pytest.mark.parametrize("route", ROUTES)
def test_same_idempotency_key_in_flight_is_409_and_retryable(gateway: Gw, emulator: EmulatorServer, route: str) -> None:
    key_id, secret = gateway.key()
    info = ROUTES[route]
    idem = "idem-" + uuid.uuid4().hex
    slow = {"idempotency-key": idem, "x-emulator-latency-ms": "800"}
    thread, out = in_flight(lambda: post(gateway, info.path, info.good, slow, secret=secret))
    wait_for(lambda: gateway.store.key_spend(key_id)[1] > 0)
    first_hold = gateway.store.key_spend(key_id)
    tag = new_tag()
    reply = post(gateway, info.path, info.good, {"idempotency-key": idem, "x-emulator-tag": tag}, secret=secret)
    assert_refused(
        gateway, emulator, route, reply, status=409, code="idempotency_key_in_use", tag=tag, key_id=key_id,
        mentions=(idem,), charged=first_hold, total=2,
    )  # fmt: skip
    thread.join(10)
    assert isinstance(out[0], Reply) and out[0].status == 200


# ---------------------------------------------------------------------------------------------- SDK exception classes


class Sdk:
    """Builds SDK clients (max_retries=0) and closes them all at teardown, so no socket is leaked."""

    def __init__(self) -> None:
        self._open: list[openai.OpenAI | anthropic.Anthropic] = []

    def oai(self, gw: Gw, secret: str) -> openai.OpenAI:
        client = openai.OpenAI(base_url=gw.openai_base_url, api_key=secret, max_retries=0)
        self._open.append(client)
        return client

    def ant(self, gw: Gw, secret: str, bearer: bool = False) -> anthropic.Anthropic:
        if bearer:
            client = anthropic.Anthropic(base_url=gw.origin, auth_token=secret, max_retries=0)
        else:
            client = anthropic.Anthropic(base_url=gw.origin, api_key=secret, max_retries=0)
        self._open.append(client)
        return client

    def close(self) -> None:
        for client in self._open:
            client.close()


@pytest.fixture
def sdk() -> Iterator[Sdk]:
    made = Sdk()
    yield made
    made.close()


def test_openai_sdk_sees_bad_request(gateway: Gw, sdk: Sdk) -> None:
    _, secret = gateway.key()
    with pytest.raises(openai.BadRequestError) as info:
        sdk.oai(gateway, secret).chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=-1)  # type: ignore[arg-type]
    assert info.value.status_code == 400 and info.value.code == "invalid_request" and info.value.param == "max_tokens"
    assert info.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.BadRequestError) as info:
        sdk.oai(gateway, secret).responses.create(model="gpt-4.1", input="hi", max_output_tokens=20, background=True)
    assert info.value.code == "invalid_request" and info.value.param == "background"


def test_anthropic_sdk_sees_bad_request(gateway: Gw, sdk: Sdk) -> None:
    _, secret = gateway.key()
    with pytest.raises(anthropic.BadRequestError) as info:
        sdk.ant(gateway, secret).messages.create(model="claude-haiku-4-5", max_tokens=0, messages=PROMPT)  # type: ignore[arg-type]
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict) and info.value.body["error"]["code"] == "invalid_request"


def test_sdks_see_authentication_errors(gateway: Gw, sdk: Sdk) -> None:
    with pytest.raises(openai.AuthenticationError) as oe:
        sdk.oai(gateway, "fm-nope").chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=5)  # type: ignore[arg-type]
    assert oe.value.code == "invalid_api_key"
    with pytest.raises(anthropic.AuthenticationError) as ae:
        sdk.ant(gateway, "fm-nope").messages.create(model="claude-haiku-4-5", max_tokens=5, messages=PROMPT)  # type: ignore[arg-type]
    assert isinstance(ae.value.body, dict) and ae.value.body["error"]["code"] == "invalid_api_key"
    bearer = sdk.ant(gateway, "fm-nope", bearer=True)
    with pytest.raises(anthropic.AuthenticationError):
        bearer.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=PROMPT)  # type: ignore[arg-type]


def test_sdks_see_not_found_for_unknown_models(gateway: Gw, sdk: Sdk) -> None:
    _, secret = gateway.key()
    with pytest.raises(openai.NotFoundError) as oe:
        sdk.oai(gateway, secret).chat.completions.create(model="no-such-model-7b", messages=PROMPT, max_tokens=5)  # type: ignore[arg-type]
    assert oe.value.code == "model_not_found" and oe.value.param == "model"
    with pytest.raises(anthropic.NotFoundError) as ae:
        sdk.ant(gateway, secret).messages.create(model="no-such-model-7b", max_tokens=5, messages=PROMPT)  # type: ignore[arg-type]
    assert isinstance(ae.value.body, dict) and ae.value.body["error"]["code"] == "model_not_found"


def test_sdks_see_402_for_the_cap(gateway: Gw, sdk: Sdk) -> None:
    _, secret = gateway.key(max_spend_nano=1)
    with pytest.raises(openai.APIStatusError) as oe:
        sdk.oai(gateway, secret).chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=5)  # type: ignore[arg-type]
    assert oe.value.status_code == 402 and oe.value.code == "budget_exceeded"
    assert not isinstance(oe.value, (openai.BadRequestError, openai.RateLimitError))
    with pytest.raises(anthropic.APIStatusError) as ae:
        sdk.ant(gateway, secret).messages.create(model="claude-haiku-4-5", max_tokens=5, messages=PROMPT)  # type: ignore[arg-type]
    assert ae.value.status_code == 402 and isinstance(ae.value, anthropic.PaymentRequiredError)
    with pytest.raises(openai.APIStatusError) as re_:
        sdk.oai(gateway, secret).responses.create(model="gpt-4.1", input="hi", max_output_tokens=5)
    assert re_.value.status_code == 402


def test_sdks_see_unbounded_requests_as_bad_requests(gateway: Gw, sdk: Sdk) -> None:
    _, secret = gateway.key()
    with pytest.raises(openai.BadRequestError) as oe:
        sdk.oai(gateway, secret).responses.create(
            model="gpt-4.1", input="hi", max_output_tokens=5, previous_response_id="resp_0123456789"
        )
    assert oe.value.code == "unbounded_request"


def test_sdks_see_413(small_gateway: Gw, sdk: Sdk) -> None:
    _, secret = small_gateway.key()
    big = [{"role": "user", "content": "x" * 2000}]
    with pytest.raises(openai.APIStatusError) as oe:
        sdk.oai(small_gateway, secret).chat.completions.create(model="gpt-4o-mini", messages=big, max_tokens=5)  # type: ignore[arg-type]
    assert oe.value.status_code == 413 and oe.value.code == "request_too_large"
    with pytest.raises(anthropic.APIStatusError) as ae:
        sdk.ant(small_gateway, secret).messages.create(model="claude-haiku-4-5", max_tokens=5, messages=big)  # type: ignore[arg-type]
    assert ae.value.status_code == 413


def test_sdk_sees_409_as_conflict(gateway: Gw, sdk: Sdk) -> None:
    key_id, secret = gateway.key()
    idem = "idem-" + uuid.uuid4().hex
    slow = {"Idempotency-Key": idem, "x-emulator-latency-ms": "800"}
    client = sdk.oai(gateway, secret)
    thread, out = in_flight(
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=5, extra_headers=slow)  # type: ignore[arg-type]
    )
    wait_for(lambda: gateway.store.key_spend(key_id)[1] > 0)
    with pytest.raises(openai.ConflictError) as oe:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=PROMPT,
            max_tokens=5,
            extra_headers={"Idempotency-Key": idem},  # type: ignore[arg-type]
        )
    assert oe.value.code == "idempotency_key_in_use"
    assert oe.value.response.headers["retry-after"] == "1"
    thread.join(10)
    assert not isinstance(out[0], Exception), out


# ---------------------------------------------------------------------------------------------- truncated body


@pytest.mark.parametrize("route", ROUTES)
def test_client_leaving_mid_body_leaves_one_call_record(gateway: Gw, emulator: EmulatorServer, route: str) -> None:
    key_id, secret = gateway.key()
    tag = new_tag()
    head = (
        f"POST {ROUTES[route].path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {secret}\r\n"
        f"Content-Type: application/json\r\nContent-Length: 500\r\nx-emulator-tag: {tag}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gateway.server.port), timeout=5) as sock:
        sock.sendall(head.encode() + b'{"model": "gpt-4o-mini", ')
        time.sleep(0.1)
    assert emulator.stats()["tags"].get(tag) is None
    assert gateway.store.key_spend(key_id) == (0, 0)
    wait_for(lambda: len(gateway.calls()) > 0, timeout=2)
    (record,) = gateway.calls()
    assert record["status"] in ("bad_request", "client_disconnected") and record["key_id"] == key_id
