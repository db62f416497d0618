"""Organisations, plans, payers, grants, top-ups, refunds and limits, written once for both backends.

Every change made here is written to ``admin_log`` in the same transaction, with the actor that
made it (an admin key id, or ``cli:USER`` for the command line).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from fairmeter.errors import InvalidRequest, NotFound
from fairmeter.ledger.explain import state_of
from fairmeter.ledger.funding import SPILL_BUCKETS, BucketKind, Portion
from fairmeter.ledger.plans import (
    Switches,
    check_name,
    parse_switches,
    plan_from_mapping,
    plan_to_mapping,
    switches_to_mapping,
)
from fairmeter.ledger.windows import period_bounds
from fairmeter.money import Nano, usd_str
from fairmeter.record import record
from fairmeter.store.funding_sql import (
    Payer,
    account_room,
    add_to_account,
    bucket_account,
    insert_transfer,
    live_grants,
    load_payer,
    period_used,
    plan_of,
    window_uses,
)
from fairmeter.store.records import DEFAULT_ORG, iso
from fairmeter.store.sql import Tx

DAY_S = 86_400
MAX_PRIORITY = 1_000_000  # fits an INTEGER column on both backends


def new_id(prefix: str) -> str:
    """Time-ordered, then random: ``org_18f3a…``."""
    return f"{prefix}_{time.time_ns() // 1000:x}{secrets.token_hex(3)}"


async def log_change(tx: Tx, actor: str, action: str, target: str, detail: dict[str, Any], now: float) -> None:
    await tx.execute(
        "INSERT INTO admin_log (id, actor, action, target, detail_json, ts) VALUES ($1, $2, $3, $4, $5, $6)",
        new_id("chg"),
        actor,
        action,
        target,
        json.dumps(detail, sort_keys=True),
        now,
    )


async def admin_log(tx: Tx, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` changes, newest first."""
    rows = await tx.fetch("SELECT id, actor, action, target, detail_json, ts FROM admin_log ORDER BY ts DESC, id DESC"
                          " LIMIT $1", limit)  # fmt: skip
    return [
        {"id": r["id"], "actor": r["actor"], "action": r["action"], "target": r["target"],
         "detail": json.loads(r["detail_json"]), "ts": iso(r["ts"])}
        for r in rows
    ]  # fmt: skip


def _name(value: str, what: str, param: str = "name") -> str:
    """A name as an admin request error (400), not a bare ValueError (which would be a 500)."""
    try:
        return check_name(value, what)
    except ValueError as exc:
        raise InvalidRequest(f"{str(exc)[0].upper()}{str(exc)[1:]}.", param=param) from None


# ---- organisations, teams, users --------------------------------------------------------------


async def create_org(tx: Tx, name: str, actor: str, now: float) -> dict[str, Any]:
    _name(name, "the organisation name")
    if await tx.fetchrow("SELECT id FROM orgs WHERE name = $1", name):
        raise InvalidRequest(f"An organisation named {name!r} already exists.", param="name")
    org_id = new_id("org")
    await tx.execute("INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3)", org_id, name, now)
    await log_change(tx, actor, "org.create", org_id, {"name": name}, now)
    return {"id": org_id, "name": name}


async def org_id_of(tx: Tx, org: str) -> str:
    """An organisation by id or name."""
    row = await tx.fetchrow("SELECT id FROM orgs WHERE id = $1 OR name = $1", org)
    if row is None:
        raise NotFound(f"No organisation {org!r}.")
    return str(row["id"])


async def create_team(tx: Tx, org: str, name: str, actor: str, now: float) -> dict[str, Any]:
    org_id = await org_id_of(tx, org)
    _name(name, "the team name")
    if await tx.fetchrow("SELECT id FROM teams WHERE org_id = $1 AND name = $2", org_id, name):
        raise InvalidRequest(f"Organisation {org} already has a team named {name!r}.", param="name")
    team_id = new_id("team")
    await tx.execute(
        "INSERT INTO teams (id, org_id, name, created_at) VALUES ($1, $2, $3, $4)", team_id, org_id, name, now
    )
    await log_change(tx, actor, "team.create", team_id, {"org_id": org_id, "name": name}, now)
    return {"id": team_id, "org_id": org_id, "name": name}


async def _member_id(tx: Tx, table: str, org_id: str, org: str, ref: str | None, what: str) -> str | None:
    """A team or user of an organisation, by id or name (None when ``ref`` is None)."""
    if ref is None:
        return None
    row = await tx.fetchrow(f"SELECT id FROM {table} WHERE org_id = $1 AND (id = $2 OR name = $2)", org_id, ref)
    if row is None:
        raise NotFound(f"Organisation {org} has no {what} {ref!r}.")
    return str(row["id"])


async def create_user(tx: Tx, org: str, name: str, team: str | None, actor: str, now: float) -> dict[str, Any]:
    org_id = await org_id_of(tx, org)
    _name(name, "the user name")
    team_id = await _member_id(tx, "teams", org_id, org, team, "team")
    if await tx.fetchrow("SELECT id FROM users WHERE org_id = $1 AND name = $2", org_id, name):
        raise InvalidRequest(f"Organisation {org} already has a user named {name!r}.", param="name")
    user_id = new_id("usr")
    await tx.execute(
        "INSERT INTO users (id, org_id, team_id, name, created_at) VALUES ($1, $2, $3, $4, $5)",
        user_id, org_id, team_id, name, now,
    )  # fmt: skip
    await log_change(tx, actor, "user.create", user_id, {"org_id": org_id, "team_id": team_id, "name": name}, now)
    return {"id": user_id, "org_id": org_id, "team_id": team_id, "name": name}


# ---- plans and payers -------------------------------------------------------------------------


async def put_plan(tx: Tx, spec: dict[str, Any], actor: str, now: float) -> dict[str, Any]:
    """Create or replace a plan (payers on it follow the new version from their next call)."""
    try:
        plan = plan_from_mapping(spec)
    except ValueError as exc:
        raise InvalidRequest(f"The plan is not valid: {exc}.") from None
    text = json.dumps(plan_to_mapping(plan), sort_keys=True)
    changed = await tx.execute("UPDATE plans SET spec_json = $1, updated_at = $2 WHERE name = $3", text, now, plan.name)
    if not changed:
        await tx.execute(
            "INSERT INTO plans (name, spec_json, created_at, updated_at) VALUES ($1, $2, $3, $3)", plan.name, text, now
        )
    await log_change(tx, actor, "plan.update" if changed else "plan.create", plan.name, json.loads(text), now)
    return plan_to_mapping(plan)


async def list_plans(tx: Tx) -> list[dict[str, Any]]:
    """Every plan in the one shape ``put_plan`` returns (the seeded default is stored as written, not filled in)."""
    rows = await tx.fetch("SELECT spec_json FROM plans ORDER BY name")
    return [plan_to_mapping(plan_of(r["spec_json"])) for r in rows]


async def create_payer(
    tx: Tx, org: str, user: str | None, plan: str, settings: dict[str, Any], actor: str, now: float
) -> dict[str, Any]:
    """The organisation's payer (``user`` None) or a user's individual payer, on ``plan``."""
    org_id = await org_id_of(tx, org)
    user_id = await _member_id(tx, "users", org_id, org, user, "user")
    if await tx.fetchrow("SELECT name FROM plans WHERE name = $1", plan) is None:
        raise NotFound(f"No plan named {plan!r}; create it first (PUT /fairmeter/v1/admin/plans/{plan}).")
    owner = await tx.fetchrow(
        "SELECT id FROM payers WHERE org_id = $1 AND " + ("user_id = $2" if user_id else "user_id IS NULL"),
        *((org_id, user_id) if user_id else (org_id,)),
    )
    if owner is not None:
        raise InvalidRequest(f"That {'user' if user_id else 'organisation'} already has a payer ({owner['id']}).")
    switches = _switches_json(settings)
    payer_id = new_id("pay")
    await tx.execute(
        "INSERT INTO payers (id, org_id, user_id, plan, switches_json, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        payer_id, org_id, user_id, plan, switches, now,
    )  # fmt: skip
    detail = {"org_id": org_id, "user_id": user_id, "plan": plan, "switches": json.loads(switches)}
    await log_change(tx, actor, "payer.create", payer_id, detail, now)
    return await payer_json(tx, payer_id)


def _switches_json(settings: dict[str, Any]) -> str:
    allowed = set(switches_to_mapping(Switches()))
    unknown = set(settings) - allowed
    if unknown:
        raise InvalidRequest(f"Unknown payer setting(s) {sorted(unknown)}; accepted: {sorted(allowed)}.")
    try:
        parse_switches(settings, Switches())
    except ValueError as exc:
        raise InvalidRequest(f"{exc}.") from None
    return json.dumps(settings, sort_keys=True)


async def set_payer(tx: Tx, payer_id: str, changes: dict[str, Any], actor: str, now: float) -> dict[str, Any]:
    """Change a payer's plan and/or switches (only the fields given)."""
    row = await tx.fetchrow("SELECT plan, switches_json FROM payers WHERE id = $1", payer_id)
    if row is None:
        raise NotFound(f"No payer {payer_id!r}.")
    if not changes:
        raise InvalidRequest("Nothing to change: give a plan or a switch.")
    changes = dict(changes)
    plan = changes.pop("plan", row["plan"])
    if await tx.fetchrow("SELECT name FROM plans WHERE name = $1", plan) is None:
        raise NotFound(f"No plan named {plan!r}.")
    settings = {**json.loads(row["switches_json"]), **changes}
    switches = _switches_json(settings)
    await tx.execute("UPDATE payers SET plan = $1, switches_json = $2 WHERE id = $3", plan, switches, payer_id)
    await log_change(tx, actor, "payer.update", payer_id, {"plan": plan, **changes}, now)
    return await payer_json(tx, payer_id)


async def payer_json(tx: Tx, payer_id: str) -> dict[str, Any]:
    payer = await load_payer(tx, payer_id, lock=False)
    if payer is None:
        raise NotFound(f"No payer {payer_id!r}.")
    return {
        "id": payer.id,
        "org_id": payer.org_id,
        "user_id": payer.user_id,
        "plan": payer.plan.name,
        **switches_to_mapping(payer.switches),
    }


async def payer_of_key(tx: Tx, key_id: str) -> str:
    row = await tx.fetchrow("SELECT payer_id FROM keys WHERE id = $1", key_id)
    if row is None or row["payer_id"] is None:
        raise NotFound(f"Key {key_id} has no payer.")
    return str(row["payer_id"])


@record
class KeyOwner:
    org_id: str
    user_id: str | None
    service: str | None
    payer_id: str


async def key_owner(tx: Tx, org: str | None, user: str | None, service: str | None) -> KeyOwner:
    """Who a key would belong to, and its payer; refuses an unknown owner without changing anything.

    A key belongs to a user or to a service of an organisation (``default`` when neither is given).
    The payer is the user's individual payer when the user has one, else the organisation's.
    """
    if user is not None and service is not None:
        raise InvalidRequest("A key belongs to a user or to a service, not both.", param="service")
    org_id = await org_id_of(tx, org) if org is not None else DEFAULT_ORG
    user_id = await _member_id(tx, "users", org_id, org or "default", user, "user")
    payer = None
    if user_id is not None:
        payer = await tx.fetchrow("SELECT id FROM payers WHERE org_id = $1 AND user_id = $2", org_id, user_id)
    if payer is None:
        payer = await tx.fetchrow("SELECT id FROM payers WHERE org_id = $1 AND user_id IS NULL", org_id)
    if payer is None:
        raise NotFound(f"Organisation {org} has no payer yet; create one (fairmeter payers create) first.")
    svc = None if user_id else _name(service or "default", "the service name", "service")
    return KeyOwner(org_id, user_id, svc, str(payer["id"]))


async def assign_key(
    tx: Tx, key_id: str, org: str | None, user: str | None, service: str | None, actor: str, now: float
) -> dict[str, Any]:
    """Give a new key its owner (a user, or a service of an organisation) and its payer."""
    owner = await key_owner(tx, org, user, service)
    await tx.execute(
        "UPDATE keys SET org_id = $1, user_id = $2, service = $3, payer_id = $4 WHERE id = $5",
        owner.org_id, owner.user_id, owner.service, owner.payer_id, key_id,
    )  # fmt: skip
    out = {"org_id": owner.org_id, "user_id": owner.user_id, "service": owner.service, "payer_id": owner.payer_id}
    await log_change(tx, actor, "key.assign", key_id, out, now)
    return out


# ---- money in: grants and top-ups ---------------------------------------------------------------


async def add_grant(
    tx: Tx,
    payer_id: str,
    amount: Nano,
    reason: str,
    actor: str,
    now: float,
    *,
    priority: int = 100,
    starts_at: float | None = None,
    expires_at: float | None = None,
) -> dict[str, Any]:
    """Issue a grant to one payer (it cannot be moved to another); the plan's grant_days by default."""
    payer = await _payer(tx, payer_id)
    if amount <= 0:
        raise InvalidRequest("A grant must be more than $0.", param="amount_usd")
    if not reason.strip():
        raise InvalidRequest("A grant needs a reason (it is shown to the payer).", param="reason")
    if not 0 <= priority <= MAX_PRIORITY:
        raise InvalidRequest(f"priority must be from 0 (burns first) to {MAX_PRIORITY}.", param="priority")
    start = now if starts_at is None else starts_at
    expires = start + payer.plan.grant_days * DAY_S if expires_at is None else expires_at
    if expires <= start:
        raise InvalidRequest("A grant must expire after it starts.", param="expires_at")
    if expires <= now:
        raise InvalidRequest(f"A grant must expire in the future; {iso(expires)} has passed.", param="expires_at")
    grant_id = new_id("gr")
    await tx.execute(
        "INSERT INTO grants (id, payer_id, amount, priority, starts_at, expires_at, reason, created_at, created_by)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        grant_id, payer_id, amount, priority, start, expires, reason, now, actor,
    )  # fmt: skip
    await add_to_account(tx, "issuer:grants", debits_posted=amount)
    await add_to_account(tx, f"grant:{grant_id}", credits_posted=amount)
    await insert_transfer(tx, grant_id, "issue", "issuer:grants", f"grant:{grant_id}", amount, "posted", now,
                          bucket="grants", reason=reason)  # fmt: skip
    detail = {"amount_usd": usd_str(amount), "priority": priority, "starts_at": iso(start), "expires_at": iso(expires)}
    await log_change(tx, actor, "grant.issue", grant_id, {"payer_id": payer_id, "reason": reason, **detail}, now)
    return {"id": grant_id, "payer_id": payer_id, "reason": reason, **detail}


async def topup(tx: Tx, payer_id: str, amount: Nano, reference: str, actor: str, now: float) -> dict[str, Any]:
    """Purchased credits (prepaid): money in, from the payment recorded as ``reference``."""
    await _payer(tx, payer_id)
    if amount <= 0:
        raise InvalidRequest("A top-up must be more than $0.", param="amount_usd")
    if not reference.strip():
        raise InvalidRequest("A top-up needs a reference (the payment it records).", param="reference")
    ref = new_id("top")
    await add_to_account(tx, "issuer:topups", debits_posted=amount)
    await add_to_account(tx, f"credits:{payer_id}", credits_posted=amount)
    await insert_transfer(tx, ref, "topup", "issuer:topups", f"credits:{payer_id}", amount, "posted", now,
                          bucket="credits", reason=reference)  # fmt: skip
    await log_change(tx, actor, "credits.topup", payer_id, {"amount_usd": usd_str(amount), "reference": reference}, now)
    return {"id": ref, "payer_id": payer_id, "amount_usd": usd_str(amount), "balance_usd": usd_str(
        await account_room(tx, f"credits:{payer_id}"))}  # fmt: skip


async def _payer(tx: Tx, payer_id: str) -> Payer:
    payer = await load_payer(tx, payer_id, lock=True)
    if payer is None:
        raise NotFound(f"No payer {payer_id!r}.")
    return payer


async def lapse_grants(tx: Tx, now: float) -> int:
    """Post what each expired grant had left to ``expired:grants`` (once no call still holds on it)."""
    rows = await tx.fetch(
        "SELECT g.id, a.credits_posted - a.debits_posted AS left_over FROM grants g"
        " JOIN accounts a ON a.id = 'grant:' || g.id"
        " WHERE g.lapsed_at IS NULL AND g.expires_at <= $1 AND a.debits_pending = 0",
        now,
    )
    for r in rows:
        left = int(r["left_over"])
        if left > 0:
            await add_to_account(tx, f"grant:{r['id']}", debits_posted=left)
            await add_to_account(tx, "expired:grants", credits_posted=left)
            await insert_transfer(tx, r["id"], "lapse", f"grant:{r['id']}", "expired:grants", left, "posted", now,
                                  bucket="grants", reason="grant expired")  # fmt: skip
        await tx.execute("UPDATE grants SET lapsed_at = $1 WHERE id = $2", now, r["id"])
    return len(rows)


# ---- limits --------------------------------------------------------------------------------------


@record
class _Cap:
    what: str
    cap: Nano | None


async def limits(tx: Tx, payer_id: str, now: float) -> dict[str, Any]:
    """Every window and bucket of the payer: used, limit, room, and when it resets or expires."""
    payer = await _payer(tx, payer_id)
    sw = payer.switches
    windows = []
    for use in await window_uses(tx, payer, now):
        st = state_of(use)
        windows.append(
            {
                "name": st.name,
                "label": st.label,
                "unit": st.unit.value,
                "used": _amount(st.used, st.unit.value),
                "held": _amount(st.held, st.unit.value),
                "limit": _amount(st.limit, st.unit.value),
                "remaining": _amount(st.room, st.unit.value),
                "resets_at": iso(st.resets_at),
                "opens_with_next_call": st.resets_at is None,
                "describe": st.describe(),
            }
        )
    grants = sorted(await live_grants(tx, payer.id, now), key=lambda g: g.burn_key)
    caps = []
    for cap in (_Cap("spill", sw.spill_cap), _Cap("overage", sw.overage_cap)):
        period = sw.spill_period if cap.what == "spill" else sw.overage_period
        start, end = period_bounds(period, now)
        used = await period_used(tx, payer.id, cap.what, start)
        caps.append(
            {
                "name": cap.what,
                "enabled": sw.spill_to_credits if cap.what == "spill" else sw.overage_enabled,
                "cap_usd": None if cap.cap is None else usd_str(cap.cap),
                "used_usd": usd_str(used),
                "remaining_usd": None if cap.cap is None else usd_str(max(0, cap.cap - used)),
                "period": period.value,
                "resets_at": iso(end),
            }
        )
    return {
        "payer_id": payer.id,
        "plan": payer.plan.name,
        "order": [b.value for b in payer.plan.order],
        "windows": windows,
        "grants": [
            {
                "id": g.id,
                "reason": g.reason,
                "amount_usd": usd_str(g.amount),
                "remaining_usd": usd_str(g.room(now)),
                "held_usd": usd_str(g.held),
                "priority": g.priority,
                "starts_at": iso(g.starts_at),
                "expires_at": iso(g.expires_at),
            }
            for g in grants
        ],
        "credits": {"remaining_usd": usd_str(await account_room(tx, f"credits:{payer.id}"))},
        "spill_to_credits": caps[0],
        "overage": caps[1],
    }


def _amount(value: int, unit: str) -> str | int:
    return usd_str(value) if unit == "usd" else value


# ---- refunds -------------------------------------------------------------------------------------


async def refund_call(tx: Tx, call_id: str, amount: Nano | None, reason: str, actor: str, now: float) -> dict[str, Any]:
    """Give back (part of) what a call was charged, to the buckets it came from, last-burned first.

    Money whose bucket is gone (an expired grant, a closed window period) becomes a new grant.
    """
    if not reason.strip():
        raise InvalidRequest("A refund needs a reason.", param="reason")
    row = await tx.fetchrow("SELECT payer_id, provider, paid_json FROM calls WHERE id = $1", call_id)
    if row is None or row["paid_json"] is None:
        raise NotFound(f"No settled call {call_id!r} with a payment to refund.")
    payer_id, provider = row["payer_id"], row["provider"]
    paid = json.loads(row["paid_json"])
    refunded = await tx.fetchrow(
        "SELECT COALESCE(SUM(amount), 0) AS total FROM transfers WHERE call_id = $1 AND kind IN ('refund', 'regrant')",
        call_id,
    )
    charged = sum(a for _, _, a in paid["portions"])
    left = charged - int(refunded["total"] if refunded else 0)
    want = left if amount is None else amount
    if want <= 0 or want > left:
        raise InvalidRequest(
            f"This call can be refunded at most {usd_str(left)} USD more (charged {usd_str(charged)}).",
            param="amount_usd",
        )
    rest = want
    returned: list[dict[str, Any]] = []
    regrant = 0
    windows = {w[0]: w for w in paid["windows"]}
    payer = await _payer(tx, payer_id)
    current = {u.spec.name: u.start for u in await window_uses(tx, payer, now)}
    skip = charged - left  # refunds always go last-burned first, so earlier refunds took the first `skip`
    for bucket, source, paid_amount in reversed(paid["portions"]):
        done = min(skip, paid_amount)
        skip -= done
        take = min(rest, paid_amount - done)
        if take <= 0:
            continue
        rest -= take
        portion = Portion(BucketKind(bucket), source, take)
        alive = await _bucket_alive(tx, portion, windows, current, now)
        if not alive:
            regrant += take
            continue
        account = bucket_account(payer_id, portion)
        await add_to_account(tx, f"provider:{provider}", debits_posted=take)
        await add_to_account(tx, account, credits_posted=take)
        await insert_transfer(tx, call_id, "refund", f"provider:{provider}", account, take, "posted", now,
                              bucket=bucket, reason=reason)  # fmt: skip
        if portion.bucket is BucketKind.GRANTS:  # a grant's room is its amount less what it paid: count the refund in
            await tx.execute("UPDATE grants SET amount = amount + $1 WHERE id = $2", take, portion.source)
        period = (
            "spill" if portion.bucket in SPILL_BUCKETS else "overage" if portion.bucket is BucketKind.OVERAGE else None
        )
        if period is not None and paid.get(f"{period}_start") is not None:  # room under the cap comes back too
            await tx.execute(
                "UPDATE period_usage SET used = used - $1 WHERE payer_id = $2 AND what = $3 AND start = $4",
                take, payer_id, period, paid[f"{period}_start"],
            )  # fmt: skip
        if portion.bucket is BucketKind.SUBSCRIPTION:
            for name, start, charged_w, unit in paid["windows"]:
                back = take if unit == "usd" else -(-charged_w * take // max(paid_amount, 1))
                await tx.execute(
                    "UPDATE window_usage SET used = used - $1 WHERE payer_id = $2 AND window_name = $3 AND start = $4",
                    min(back, charged_w), payer_id, name, start,
                )  # fmt: skip
        returned.append({"bucket": bucket, "source": source, "amount_usd": usd_str(take)})
    new_grant = None
    if regrant:
        new_grant = await _regrant(tx, payer_id, provider, call_id, regrant, reason, actor, now)
        returned.append({"bucket": "grants", "source": new_grant, "amount_usd": usd_str(regrant), "new_grant": True})
    await log_change(tx, actor, "call.refund", call_id, {"amount_usd": usd_str(want), "reason": reason}, now)
    return {"call_id": call_id, "refunded_usd": usd_str(want), "returned": returned}


async def _bucket_alive(tx: Tx, p: Portion, windows: dict[str, Any], current: dict[str, float], now: float) -> bool:
    if p.bucket is BucketKind.GRANTS:
        row = await tx.fetchrow("SELECT expires_at FROM grants WHERE id = $1", p.source)
        return row is not None and row["expires_at"] > now
    if p.bucket is BucketKind.SUBSCRIPTION:
        return all(current.get(name) == w[1] for name, w in windows.items())
    return True


async def _regrant(
    tx: Tx, payer_id: str, provider: str, call_id: str, amount: Nano, reason: str, actor: str, now: float
) -> str:
    """A refund whose bucket is gone: a new grant for the payer, funded from the provider's account."""
    payer = await _payer(tx, payer_id)
    grant_id = new_id("gr")
    why = f"refund of call {call_id}: {reason}"
    await tx.execute(
        "INSERT INTO grants (id, payer_id, amount, priority, starts_at, expires_at, reason, created_at, created_by)"
        " VALUES ($1, $2, $3, 0, $4, $5, $6, $4, $7)",
        grant_id, payer_id, amount, now, now + payer.plan.grant_days * DAY_S, why, actor,
    )  # fmt: skip
    await add_to_account(tx, f"provider:{provider}", debits_posted=amount)
    await add_to_account(tx, f"grant:{grant_id}", credits_posted=amount)
    await insert_transfer(tx, call_id, "regrant", f"provider:{provider}", f"grant:{grant_id}", amount, "posted", now,
                          bucket="grants", reason=why)  # fmt: skip
    return grant_id


# ---- migrations ----------------------------------------------------------------------------------


async def migrations(tx: Tx) -> list[dict[str, Any]]:
    """The migrations applied to this database, in the order they were applied."""
    rows = await tx.fetch("SELECT name, applied_at FROM migrations ORDER BY applied_at, name")
    return [{"name": r["name"], "applied_at": r["applied_at"]} for r in rows]
