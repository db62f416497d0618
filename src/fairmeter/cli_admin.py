"""The admin commands: orgs, teams, users, plans, payers, grants, credits, refund, limits, admin-log, migrate.

They make the same changes as the admin API (``fairmeter.gateway.admin``), through the same SQL
(``fairmeter.store.admin_sql``), and each change is logged with the actor ``cli:<login name>``.
Every command prints a readable result, or with ``--json`` the API's JSON; a refusal prints
``fairmeter: <sentence>`` and exits 2 (``cli.main``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from fairmeter.admin_ops import instant, usd_amount
from fairmeter.cli_common import cli_actor, config_of, db_args, list_limit, store_of
from fairmeter.clock import SystemClock
from fairmeter.errors import InvalidRequest
from fairmeter.ledger.windows import Period
from fairmeter.record import record
from fairmeter.store import Store, admin_sql, run_with
from fairmeter.store.sql import Tx
from fairmeter.tables import limits_text, money_text

T = TypeVar("T")
Sub = Any  # argparse's _SubParsersAction, which typeshed keeps private


@record
class Ctx:
    store: Store
    now: float  # float-ok: seconds; the instant the store was opened at (migrations applied then)
    actor: str

    async def run(self, op: Callable[[Tx], Coroutine[Any, Any, T]]) -> T:
        return await self.store.run(op)


Op = Callable[[argparse.Namespace, Ctx], Awaitable[tuple[Any, str]]]


def _runner(op: Op, create: bool) -> Callable[[argparse.Namespace], int]:
    def cmd(args: argparse.Namespace) -> int:
        now = SystemClock().now()
        store = store_of(config_of(args), create=create, now=now)
        result, text = run_with(store, lambda s: op(args, Ctx(s, now, cli_actor())))
        print(json.dumps(result) if args.json else text)
        return 0

    return cmd


def _command(sub: Sub, name: str, help_text: str, op: Op, create: bool = False) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    db_args(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON (the admin API's shape)")
    p.set_defaults(fn=_runner(op, create))
    return p


def _group(sub: Sub, name: str, help_text: str) -> Sub:
    return sub.add_parser(name, help=help_text).add_subparsers(dest=f"{name}_cmd", required=True)


def _fields(record: dict[str, Any]) -> str:
    return "\n".join(f"  {k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in record.items())


# ---- organisations, teams, users ---------------------------------------------------------------


async def org_create(a: argparse.Namespace, c: Ctx) -> tuple[Any, str]:
    r = await c.run(lambda tx: admin_sql.create_org(tx, a.name, c.actor, c.now))
    return r, f"created organisation {r['id']} ({r['name']})"


async def team_create(a: argparse.Namespace, c: Ctx) -> tuple[Any, str]:
    r = await c.run(lambda tx: admin_sql.create_team(tx, a.org, a.name, c.actor, c.now))
    return r, f"created team {r['id']} ({r['name']}) in {r['org_id']}"


async def user_create(a: argparse.Namespace, c: Ctx) -> tuple[Any, str]:
    r = await c.run(lambda tx: admin_sql.create_user(tx, a.org, a.name, a.team, c.actor, c.now))
    team = f", team {r['team_id']}" if r["team_id"] else ""
    return r, f"created user {r['id']} ({r['name']}) in {r['org_id']}{team}"


# ---- plans and payers ----------------------------------------------------------------------------


def _plan_file(name: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text()
    except OSError as exc:
        raise InvalidRequest(f"cannot read the plan file {name}: {exc.strerror}") from None
    try:
        spec = json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"the plan file {name} is not valid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise InvalidRequest(f"the plan file {name} must hold one JSON object (a plan)")
    return spec


async def plan_set(a: argparse.Namespace, c: Ctx) -> tuple[Any, str]:
    spec = _plan_file(a.file)
    r = await c.run(lambda tx: admin_sql.put_plan(tx, spec, c.actor, c.now))
    return r, f"saved plan {r['name']}\n{_fields(r)}"


async def plan_list(a: argparse.Namespace, c: Ctx) -> tuple[Any, str]:
    plans = await c.run(admin_sql.list_plans)
    lines = [
        f"{p['name']:<20} windows: {', '.join(w['name'] for w in p['windows']) or '-'}; order: {', '.join(p['order'])}"
        for p in plans
    ]
    return {"data": plans}, "\n".join(lines) or "no plans"


def _on_off(text: str | None) -> bool | None:
    return None if text is None else text == "on"


def _cap(text: str | None, flag: str) -> str | None:
    if text is None or text == "none":
        return None
    usd_amount(text, flag)
    return text


def _switches(a: argparse.Namespace) -> dict[str, Any]:
    """The payer switches given on the command line (``--spill-cap-usd none`` removes a cap)."""
    given = {
        "spill_to_credits": _on_off(a.spill_to_credits),
        "spill_period": a.spill_period,
        "overage_enabled": _on_off(a.overage),
        "overage_period": a.overage_period,
    }
    out = {k: v for k, v in given.items() if v is not None}
    for key, text in (("spill_cap_usd", a.spill_cap_usd), ("overage_cap_usd", a.overage_cap_usd)):
        if text is not None:
            out[key] = _cap(text, "--" + key.replace("_", "-"))
    return out


def _switch_args(p: argparse.ArgumentParser) -> None:
    periods = [x.value for x in Period]
    p.add_argument("--spill-to-credits", choices=["on", "off"], help="let grants and purchased credits pay")
    p.add_argument("--spill-cap-usd", help='most grants and credits pay per spill period ("none": no cap)')
    p.add_argument("--spill-period", choices=periods)
    p.add_argument("--overage", choices=["on", "off"], help="let overage (billed later) pay")
    p.add_argument("--overage-cap-usd", help='most overage per overage period ("none": no cap)')
    p.add_argument("--overage-period", choices=periods)


async def payer_create(a: argparse.Namespace, c: Ctx) -> tuple[Any, str]:
    settings = _switches(a)
    r = await c.run(lambda tx: admin_sql.create_payer(tx, a.org, a.user, a.plan, settings, c.actor, c.now))
    return r, f"created payer {r['id']}\n{_fields(r)}"


async def payer_show(a: argparse.Namespace, c: Ctx) -> tuple[Any, str]:
    r = await c.run(lambda tx: admin_sql.payer_json(tx, a.id))
    return r, f"payer {r['id']}\n{_fields(r)}"


async def payer_set(a: argparse.Namespace, c: Ctx) -> tuple[Any, str]:
    changes = {**_switches(a), **({"plan": a.plan} if a.plan is not None else {})}
    r = await c.run(lambda tx: admin_sql.set_payer(tx, a.id, changes, c.actor, c.now))
    return r, f"updated payer {r['id']}\n{_fields(r)}"


# ---- money: grants, top-ups, refunds -------------------------------------------------------------


def _days(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 3650:
        raise argparse.ArgumentTypeError(f"must be a whole number of days from 1 to 3650, got {text!r}")
    return int(text)


async def grant_add(a: argparse.Namespace, c: Ctx) -> tuple[Any, str]:
    amount = usd_amount(a.amount_usd, "--amount-usd")
    expires = instant(a.expires, "--expires") if a.expires else None
    if a.days is not None:
        expires = c.now + a.days * admin_sql.DAY_S
    r = await c.run(
        lambda tx: admin_sql.add_grant(tx, a.payer, amount, a.reason, c.actor, c.now, priority=a.priority,
                                       expires_at=expires)
    )  # fmt: skip
    return r, f"granted {money_text(r['amount_usd'])} to {r['payer_id']} as {r['id']}, expires {r['expires_at']}"


async def credits_topup(a: argparse.Namespace, c: Ctx) -> tuple[Any, str]:
    amount = usd_amount(a.amount_usd, "--amount-usd")
    r = await c.run(lambda tx: admin_sql.topup(tx, a.payer, amount, a.reference, c.actor, c.now))
    return (
        r,
        f"added {money_text(r['amount_usd'])} of credits to {r['payer_id']}; balance {money_text(r['balance_usd'])}",
    )


async def refund(a: argparse.Namespace, c: Ctx) -> tuple[Any, str]:
    amount = None if a.amount_usd is None else usd_amount(a.amount_usd, "--amount-usd")
    r = await c.run(lambda tx: admin_sql.refund_call(tx, a.call_id, amount, a.reason, c.actor, c.now))
    back = "; ".join(f"{money_text(x['amount_usd'])} to {x['bucket']} ({x['source']})" for x in r["returned"])
    return r, f"refunded {money_text(r['refunded_usd'])} of call {r['call_id']}: {back}"


# ---- reading: limits, the log, migrations ---------------------------------------------------------


async def limits(a: argparse.Namespace, c: Ctx) -> tuple[Any, str]:
    r = await c.run(lambda tx: admin_sql.limits(tx, a.payer, c.now))
    return r, limits_text(r)


async def admin_log(a: argparse.Namespace, c: Ctx) -> tuple[Any, str]:
    rows = await c.run(lambda tx: admin_sql.admin_log(tx, a.limit))
    lines = [f"{e['ts']}  {e['actor']:<20} {e['action']:<14} {e['target']:<26} {json.dumps(e['detail'])}" for e in rows]
    return {"data": rows}, "\n".join(lines) or "no changes yet"


async def migrate(a: argparse.Namespace, c: Ctx) -> tuple[Any, str]:
    """Opening the store applied what was missing, recorded at the instant it was opened."""
    done = await c.run(admin_sql.migrations)
    applied = [m["name"] for m in done if m["applied_at"] == c.now]
    names = [m["name"] for m in done]
    text = f"applied {', '.join(applied)}" if applied else f"up to date ({len(names)} migrations)"
    return {"applied": applied, "migrations": names}, text


# ---- registration --------------------------------------------------------------------------------


def register(sub: Sub) -> None:
    """Add the admin commands to the `fairmeter` parser's subcommands."""
    orgs = _group(sub, "orgs", "organisations")
    _command(orgs, "create", "create an organisation", org_create, create=True).add_argument("name")
    teams = _group(sub, "teams", "teams of an organisation")
    p = _command(teams, "create", "create a team", team_create)
    p.add_argument("--org", required=True)
    p.add_argument("name")
    users = _group(sub, "users", "users of an organisation")
    p = _command(users, "create", "create a user", user_create)
    p.add_argument("--org", required=True)
    p.add_argument("--team")
    p.add_argument("name")

    plans = _group(sub, "plans", "plans: windows, burn order, default switches (docs/funding.md)")
    _command(
        plans, "set", "create or replace a plan from a JSON file (- for stdin)", plan_set, create=True
    ).add_argument("file")
    _command(plans, "list", "list the plans", plan_list)

    payers = _group(sub, "payers", "who pays: an organisation, or a user on an individual plan")
    p = _command(payers, "create", "create a payer on a plan", payer_create)
    p.add_argument("--org", required=True)
    p.add_argument("--user", help="a user of the organisation, for an individual plan")
    p.add_argument("--plan", required=True)
    _switch_args(p)
    _command(payers, "show", "show a payer", payer_show).add_argument("id")
    p = _command(payers, "set", "change a payer's plan or switches", payer_set)
    p.add_argument("id")
    p.add_argument("--plan")
    _switch_args(p)

    grants = _group(sub, "grants", "promotional or compensation credits, each for one payer")
    p = _command(grants, "add", "give a payer a grant", grant_add)
    p.add_argument("payer")
    p.add_argument("--amount-usd", required=True)
    p.add_argument("--reason", required=True)
    p.add_argument("--priority", type=int, default=100, help="lower burns first (default 100)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--expires", help="ISO-8601 time (UTC unless it names a zone) or epoch seconds")
    when.add_argument("--days", type=_days, help="expires this many days from now (default: the plan's grant_days)")

    credits = _group(sub, "credits", "purchased credits")
    p = _command(credits, "topup", "add purchased credits to a payer", credits_topup)
    p.add_argument("payer")
    p.add_argument("--amount-usd", required=True)
    p.add_argument("--reference", required=True, help="the payment this records")

    p = _command(sub, "refund", "give back (part of) what a call was charged", refund)
    p.add_argument("call_id")
    p.add_argument("--amount-usd", help="default: all that is left to refund")
    p.add_argument("--reason", required=True)

    _command(sub, "limits", "every window and bucket of a payer", limits).add_argument("payer")
    p = _command(sub, "admin-log", "the admin log, newest first", admin_log)
    p.add_argument("--limit", type=list_limit, default=50)
    _command(sub, "migrate", "apply the database migrations that are missing", migrate, create=True)
