"""`fairmeter demo`, part 2: a subscriber's windows fill, then credits take over (grants first).

The gateway runs on a demo clock here, so the 5-hour block can close without waiting 5 hours. Every
call's payer comes from `/fairmeter/v1/calls/{id}/explain`, the same answer a user would get.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from fairmeter.config import Config
from fairmeter.money import parse_usd, to_nano
from fairmeter.store import Store, admin_sql, open_store, run_with
from fairmeter.tables import id_width
from fairmeter.testing import FrozenClock

PLAN = {
    "name": "pro-demo",
    "windows": [
        {"name": "5h", "kind": "block", "hours": 5, "limit_usd": "0.0001"},
        {"name": "weekly", "kind": "weekly", "anchor": "monday 09:00", "limit_usd": "0.00012"},
    ],
    "spill_to_credits": False,
}
ACTOR = "demo"


def run_subscriber_demo(config: Config, start: float) -> bool:  # float-ok: seconds
    """Part 2 of the demo; True when every step did what it should."""
    import openai

    from fairmeter.gateway.server import GatewayServer

    clock = FrozenClock(start)
    with GatewayServer(config, clock=clock) as gw:
        payer, secret = run_with(open_store(config.database_url, start), lambda s: _subscriber(s, start))
        print(f"\nPart 2: a subscriber on plan {PLAN['name']} (payer {payer})")
        print("  5-hour window $0.0001, weekly window $0.00012; a $0.00003 grant; $0.01 of purchased credits;")
        print("  pay-as-you-go credits (spill_to_credits) off.\n")
        oai = openai.OpenAI(base_url=gw.openai_base_url, api_key=secret, max_retries=0)
        prompt = [{"role": "user", "content": "Name a prime number."}]
        rows: list[dict[str, Any]] = []

        def until_refused(label: str, limit: int = 30) -> str:
            for _ in range(limit):
                try:
                    raw = oai.chat.completions.with_raw_response.create(
                        model="gpt-4o-mini",
                        messages=prompt,  # type: ignore[arg-type]
                        max_tokens=30,
                    )
                except openai.APIStatusError as exc:
                    rows.append(_explain(gw.origin, secret, exc.response.headers["fairmeter-call-id"], label))
                    return str(exc.response.json()["error"]["message"])
                rows.append(_explain(gw.origin, secret, raw.headers["fairmeter-call-id"], label))
            return ""

        step("calls until the 5-hour window is full")
        print(f"    -> 402 allowance_exhausted: {until_refused('5h block 1')}")
        clock.advance(5 * 3600 + 60)
        step("5 hours later (demo clock): a new block opens; calls until the weekly window is full")
        weekly = until_refused("5h block 2")
        print(f"    -> 402 allowance_exhausted: {weekly}")
        run_with(
            open_store(config.database_url, start),
            lambda s: s.run(lambda tx: admin_sql.set_payer(tx, payer, {"spill_to_credits": True}, ACTOR, start)),
        )
        step("spill_to_credits switched on: the grant pays first, then the purchased credits")
        for _ in range(14):  # a cheap call is still paid by the windows while they have room for it
            raw = oai.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=prompt,  # type: ignore[arg-type]
                max_tokens=30,
            )
            rows.append(_explain(gw.origin, secret, raw.headers["fairmeter-call-id"], "credits on"))
        print()
        print_paid_by(rows)
        sources = [r["paid_by"] for r in rows if r["paid_by"]]
        first_grant = next((i for i, s in enumerate(sources) if "grant" in s), -1)
        first_credit = next((i for i, s in enumerate(sources) if "credits" in s), -1)
        print("\n" + next(r["sentence"] for r in rows if "credits" in r["paid_by"]))
        return "weekly allowance" in weekly and 0 <= first_grant <= first_credit


async def _subscriber(store: Store, now: float) -> tuple[str, str]:  # float-ok: seconds
    async def setup(tx: Any) -> str:
        await admin_sql.create_org(tx, "acme", ACTOR, now)
        await admin_sql.put_plan(tx, dict(PLAN), ACTOR, now)
        payer = await admin_sql.create_payer(tx, "acme", None, PLAN["name"], {}, ACTOR, now)  # type: ignore[arg-type]
        pid = str(payer["id"])
        await admin_sql.add_grant(tx, pid, to_nano(parse_usd("0.00003")), "welcome credit", ACTOR, now, priority=1)
        await admin_sql.topup(tx, pid, to_nano(parse_usd("0.01")), "demo invoice 1", ACTOR, now)
        return pid

    payer = await store.run(setup)
    key, secret = await store.create_key("subscriber", None, False, now)
    await store.run(lambda tx: admin_sql.assign_key(tx, key.id, "acme", None, "demo-app", ACTOR, now))
    return payer, secret


def _explain(origin: str, secret: str, call_id: str, label: str) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{origin}/fairmeter/v1/calls/{call_id}/explain", headers={"Authorization": f"Bearer {secret}"}
    )
    with urllib.request.urlopen(req) as resp:
        data: dict[str, Any] = json.load(resp)
    paid = ", ".join(f"{p['bucket'] if p['bucket'] != 'grants' else 'grant'} ${p['amount_usd']}" for p in data["paid"])
    return {
        "call": call_id,
        "when": label,
        "status": data["status"],
        "billed": data["billed_usd"],
        "paid_by": paid,
        "sentence": data["sentence"],
    }


def print_paid_by(rows: list[dict[str, Any]]) -> None:
    w = id_width(r["call"] for r in rows)
    print(f"{'call':<{w}} {'when':<11} {'status':<8} {'billed USD':>11}  paid by")
    for r in rows:
        paid = r["paid_by"] or "nothing: " + r["sentence"].partition("does not fit: ")[2].split(";")[0]
        print(f"{r['call']:<{w}} {r['when']:<11} {r['status']:<8} {r['billed']:>11}  {paid}")


def step(text: str) -> None:
    print(f"  * {text}")
