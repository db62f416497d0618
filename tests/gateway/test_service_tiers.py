"""Service tiers: held at the tier asked for, billed at the tier the provider says it served."""

from __future__ import annotations

import json
from decimal import Decimal

from tests.conftest import Gw
from tests.gateway.test_metering import PROMPT, oai

from fairmeter.testing import EmulatorServer

# genai-prices 0.2.3, gpt-5: standard 1.25 / 10, flex 0.625 / 5, priority 2.5 / 20 (USD per 1M tokens)


def test_a_flex_call_is_held_and_billed_at_flex_rates(gateway: Gw) -> None:
    _, secret = gateway.key()
    client = oai(gateway, secret)
    std = client.chat.completions.with_raw_response.create(model="gpt-5", messages=PROMPT, max_tokens=100)  # type: ignore[arg-type]
    flex = client.chat.completions.with_raw_response.create(
        model="gpt-5",
        messages=PROMPT,  # type: ignore[arg-type]
        max_tokens=100,
        service_tier="flex",
    )
    assert flex.parse().service_tier == "flex"
    s, f = gateway.call(std.headers["fairmeter-call-id"]), gateway.call(flex.headers["fairmeter-call-id"])
    assert f["unit_prices"]["input"] == "0.625" and s["unit_prices"]["input"] == "1.25"
    assert Decimal(f["reserved_usd"]) * 2 == Decimal(s["reserved_usd"])
    usage = flex.parse().usage
    assert usage is not None
    expected = (Decimal(usage.prompt_tokens) * Decimal("0.625") + Decimal(usage.completion_tokens) * 5) / 10**6
    assert Decimal(f["cost_usd"]) == expected


def test_a_call_served_at_priority_is_billed_at_priority_rates(gateway: Gw, emulator: EmulatorServer) -> None:
    _, secret = gateway.key()
    body = {
        "id": "chatcmpl-tier",
        "object": "chat.completion",
        "created": 1763900000,
        "model": "gpt-5",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100},
        "service_tier": "priority",
    }
    emulator.add_scenario(
        {"id": "served-priority", "provider": "openai", "api": "chat", "stream": False, "http_status": 200,
         "response": body}
    )  # fmt: skip
    raw = oai(gateway, secret).chat.completions.with_raw_response.create(
        model="gpt-5",
        messages=PROMPT,
        max_tokens=2000,
        extra_headers={"x-emulator-scenario": "served-priority"},  # type: ignore[arg-type]
    )
    call = gateway.call(raw.headers["fairmeter-call-id"])
    assert json.loads(json.dumps(call["unit_prices"]))["input"] == "2.5"
    assert Decimal(call["cost_usd"]) == (Decimal(1000) * Decimal("2.5") + Decimal(100) * 20) / 10**6
    assert not call["needs_reconciliation"]
