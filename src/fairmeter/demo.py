"""`fairmeter demo`: the emulator and the gateway on SQLite, real SDK traffic, a table of the calls."""

from __future__ import annotations

import json
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

from fairmeter.config import parse_config
from fairmeter.demo_funding import run_subscriber_demo
from fairmeter.money import NANO_PER_USD, Nano, to_nano, usd_str
from fairmeter.store import Store, open_store, run_with
from fairmeter.tables import print_calls
from fairmeter.verify import verify_store

DEMO_CAP_NANO = 5 * NANO_PER_USD // 100  # $0.05
UPSTREAM_KEY_ENV = "FAIRMETER_DEMO_UPSTREAM_KEY"


def run_demo(base: Path) -> int:
    """Run the demo; returns the process exit status."""
    import anthropic
    import openai

    from fairmeter.gateway.server import GatewayServer
    from fairmeter.testing import EmulatorServer

    base.mkdir(parents=True, exist_ok=True)
    db = base / "demo.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    with EmulatorServer() as emu:
        print(f"provider emulator on {emu.origin}")
        config = parse_config(
            {
                "database_url": f"sqlite:///{db}",
                "upstreams": {
                    "openai": {"base_url": emu.openai_base_url, "api_key_env": UPSTREAM_KEY_ENV},
                    "anthropic": {"base_url": emu.origin, "api_key_env": UPSTREAM_KEY_ENV},
                },
            },
            {UPSTREAM_KEY_ENV: "sk-demo-upstream"},
            "demo",
        )
        with GatewayServer(config) as gw:
            now = gw.state.clock.now()
            store = open_store(config.database_url, now)  # our own connection, not the gateway's
            key, secret = run_with(store, lambda s: s.create_key("demo", DEMO_CAP_NANO, False, now))
            print(f"gateway on {gw.origin}, SQLite file {db}")
            print(f"demo key {key.id} with a spend cap of ${usd_str(DEMO_CAP_NANO)}\n")
            oai = openai.OpenAI(base_url=gw.openai_base_url, api_key=secret, max_retries=0)
            ant = anthropic.Anthropic(base_url=gw.origin, api_key=secret, max_retries=0)
            prompt = [{"role": "user", "content": "Name three prime numbers and say why they are prime."}]

            step("OpenAI chat, plain")
            oai.chat.completions.create(model="gpt-4o-mini", messages=prompt, max_tokens=300)  # type: ignore[arg-type]
            step("OpenAI chat, streamed")
            for _ in oai.chat.completions.create(
                model="gpt-4o-mini",
                messages=prompt,  # type: ignore[arg-type]
                max_tokens=300,
                stream=True,
            ):
                pass
            step("Anthropic messages, plain")
            ant.messages.create(model="claude-haiku-4-5", max_tokens=300, messages=prompt)  # type: ignore[arg-type]
            step("Anthropic messages, streamed")
            with ant.messages.stream(model="claude-haiku-4-5", max_tokens=300, messages=prompt) as s:  # type: ignore[arg-type]
                s.get_final_message()
            step("a call that fails upstream (HTTP 500): costs nothing")
            try:
                oai.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=prompt,  # type: ignore[arg-type]
                    max_tokens=300,
                    extra_headers={"x-emulator-error": "500"},
                )
            except openai.InternalServerError as exc:
                print(f"    -> refused upstream as expected: HTTP {exc.status_code}")
            step("the same call sent twice with one Idempotency-Key: charged once")
            for _ in range(2):
                ant.messages.create(
                    model="claude-haiku-4-5",
                    max_tokens=300,
                    messages=prompt,  # type: ignore[arg-type]
                    extra_headers={"Idempotency-Key": "demo-retry-1"},
                )
            step("a call whose worst case does not fit under the cap: refused before forwarding")
            try:
                ant.messages.create(model="claude-sonnet-4-5", max_tokens=20_000, messages=prompt)  # type: ignore[arg-type]
            except anthropic.APIStatusError as exc:
                print(f"    -> HTTP {exc.status_code}: {_message(exc.body)}")

            rows = _calls(gw.origin, secret)
            print()
            print_calls(rows)
            total = sum(to_nano(Decimal(r["billed_usd"])) for r in rows)
            (spent, held), result = run_with(open_store(config.database_url, now), lambda s: _books(s, key.id))
            print(f"\ntotal billed: ${usd_str(total)}  (key spent ${usd_str(spent)}, held ${usd_str(held)})")
            print(f"books balanced: {result['balanced']}, caps ok: {result['caps_ok']}")
            ok = result["balanced"] and result["caps_ok"] and total == spent and held == 0
        ok = run_subscriber_demo(config, now) and ok
        result = run_with(open_store(config.database_url, now), verify_store)
        print(f"\nbooks balanced after both parts: {result['balanced']}, caps ok: {result['caps_ok']}")
        ok = ok and result["balanced"] and result["caps_ok"]
    return 0 if ok else 1


async def _books(store: Store, key_id: str) -> tuple[tuple[Nano, Nano], dict[str, Any]]:
    """The demo key's (spent, held) and the verdict of `fairmeter verify`."""
    return await store.key_spend(key_id), await verify_store(store)


def step(text: str) -> None:
    print(f"  * {text}")


def _message(body: object) -> str:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("message"))
    return str(body)


def _calls(origin: str, secret: str) -> list[dict[str, Any]]:
    req = urllib.request.Request(
        origin + "/fairmeter/v1/calls?limit=100", headers={"Authorization": f"Bearer {secret}"}
    )
    with urllib.request.urlopen(req) as resp:
        data: dict[str, Any] = json.load(resp)
    return list(reversed(data["data"]))
