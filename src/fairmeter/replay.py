"""`fairmeter replay CASES.json`: each cost case through the real gateway, one JSON line per case.

For every case the emulator replays that exact response (status, body or SSE events) and the
gateway prices the call with the case's ``prices_per_mtok`` (as a config price override).
"""

from __future__ import annotations

import contextlib
import http.client
import json
from pathlib import Path
from typing import Any

from fairmeter.config import PriceOverride, parse_config
from fairmeter.pricing.rates import rates_from_mapping
from fairmeter.store import open_store, run_with
from fairmeter.store.records import USAGE_FIELDS

PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "messages": "/v1/messages"}
REPLAY_FIELDS = ("id", "usage_status", *USAGE_FIELDS, "cost_usd", "billed_usd", "estimated")


def _request(case: dict[str, Any]) -> dict[str, Any]:
    model, stream, api = case["model"], bool(case["stream"]), case["api"]
    text = f"replay of cost case {case['id']}"
    if api == "chat":
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
        body["max_completion_tokens"] = 100_000
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body
    if api == "responses":
        return {"model": model, "input": text, "stream": stream, "max_output_tokens": 100_000}
    return {"model": model, "max_tokens": 100_000, "messages": [{"role": "user", "content": text}], "stream": stream}


def _post(port: int, path: str, body: bytes, headers: dict[str, str]) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        # A cut stream raises here; the call is still recorded and billed for what was delivered.
        with contextlib.suppress(http.client.IncompleteRead, ConnectionError):
            resp.read()
        return resp.headers.get("fairmeter-call-id", "")
    finally:
        conn.close()


def _get(port: int, path: str, secret: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {secret}"})
        data: dict[str, Any] = json.loads(conn.getresponse().read())
        return data
    finally:
        conn.close()


def replay_cases(cases: list[dict[str, Any]], workdir: Path) -> list[dict[str, Any]]:
    """Run each case through a real gateway and emulator; return the replay records."""
    from fairmeter.catalog import Catalog
    from fairmeter.gateway.server import GatewayServer
    from fairmeter.testing import EmulatorServer

    out: list[dict[str, Any]] = []
    with EmulatorServer() as emu:
        config = parse_config(
            {
                "database_url": f"sqlite:///{workdir / 'replay.db'}",
                "upstreams": {
                    "openai": {"base_url": emu.openai_base_url, "api_key_env": "REPLAY_KEY"},
                    "anthropic": {"base_url": emu.origin, "api_key_env": "REPLAY_KEY"},
                },
            },
            {"REPLAY_KEY": "sk-replay"},
            "replay",
        )
        with GatewayServer(config) as gw:
            now = gw.state.clock.now()
            store = open_store(config.database_url, now)  # our own connection
            _, secret = run_with(store, lambda s: s.create_key("replay", None, True, now))
            for case in cases:
                rates = rates_from_mapping(case["prices_per_mtok"], source=f"case:{case['id']}")
                gw.state.meter.catalog = Catalog((PriceOverride(case["model"], None, rates),), use_genai_prices=False)
                emu.add_scenario(case)
                headers = {
                    "Authorization": f"Bearer {secret}",
                    "content-type": "application/json",
                    "x-emulator-scenario": case["id"],
                }
                if case["provider"] == "anthropic":
                    headers["anthropic-version"] = "2023-06-01"
                call_id = _post(gw.port, PATHS[case["api"]], json.dumps(_request(case)).encode(), headers)
                record = _get(gw.port, f"/fairmeter/v1/calls/{call_id}", secret)
                line = {k: record.get(k) for k in REPLAY_FIELDS}
                line["id"] = case["id"]
                line["call_id"] = call_id
                out.append(line)
    return out


def run_replay(path: Path) -> int:
    import tempfile

    data = json.loads(path.read_text(encoding="utf-8"))
    cases = data["cases"] if isinstance(data, dict) else data
    with tempfile.TemporaryDirectory(prefix="fairmeter-replay-") as tmp:
        for line in replay_cases(cases, Path(tmp)):
            print(json.dumps(line), flush=True)
    return 0
