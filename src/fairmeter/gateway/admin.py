"""fairmeter's admin API, ``/fairmeter/v1/admin/…``: organisations, plans, payers, grants, top-ups, refunds, keys.

Every route needs a key made with ``fairmeter keys create --admin`` (else 403 ``admin_required``) and
records its change in the admin log with the actor ``key:<that key's id>``. JSON in, JSON out; money
as decimal strings; refusals in the OpenAI error shape with fairmeter's stable codes, like the read
API. A request is checked whole (unknown fields, types) before anything is changed, and each change
is one transaction, so a refused request changes nothing and logs nothing (docs/funding.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import replace
from typing import Any, TypeVar
from urllib.parse import parse_qs

import orjson

from fairmeter.admin_ops import KeyRequest, create_owned_key, instant, usd_amount
from fairmeter.errors import AdminRequired, FairmeterError, InvalidRequest, MethodNotAllowed, NotFound
from fairmeter.gateway.asgi import ClientGone, Receive, Scope, Send, read_body, send_whole
from fairmeter.gateway.errors import render
from fairmeter.gateway.state import GatewayState
from fairmeter.record import record
from fairmeter.store import admin_sql
from fairmeter.store.records import MAX_LIST_LIMIT
from fairmeter.store.sql import Tx

PREFIX = "/fairmeter/v1/admin/"
T = TypeVar("T")


# ---- request bodies --------------------------------------------------------------------------------


@record
class Field:
    """One accepted body field: what it must be (for the sentence), its JSON types, whether it is required."""

    what: str
    types: tuple[type, ...]
    required: bool = False


TEXT = Field("a string", (str,))
WHOLE = Field("a whole number", (int,))
FLAG = Field("true or false", (bool,))
MONEY = Field('a dollar amount written as a string, e.g. "5.00"', (str,))
CAP = Field('a dollar amount written as a string, e.g. "20.00", or null for no cap', (str, type(None)))
TIME = Field("an ISO-8601 time or epoch seconds", (str, int, float))
SWITCHES = {
    "spill_to_credits": FLAG,
    "spill_cap_usd": CAP,
    "spill_period": TEXT,
    "overage_enabled": FLAG,
    "overage_cap_usd": CAP,
    "overage_period": TEXT,
}


def needed(field: Field) -> Field:
    return replace(field, required=True)


def checked(body: Mapping[str, Any], spec: Mapping[str, Field]) -> dict[str, Any]:
    """The body's fields, refused if one is unknown, missing or of the wrong JSON type."""
    unknown = sorted(set(body) - set(spec))
    if unknown:
        raise InvalidRequest(f"Unknown field(s) {unknown}; this route accepts {sorted(spec)}.", unknown[0])
    for name, field in spec.items():
        if name not in body:
            if field.required:
                raise InvalidRequest(f"{name} is required: {field.what}.", name)
            continue
        value = body[name]
        if not isinstance(value, field.types) or (isinstance(value, bool) and bool not in field.types):
            shown = orjson.dumps(value).decode()[:80]
            raise InvalidRequest(f"{name} must be {field.what} (got {shown}).", name)
    return dict(body)


def switch_settings(body: Mapping[str, Any]) -> dict[str, Any]:
    """The payer switches present in a checked body; caps must be exact dollar strings like every amount."""
    for cap in ("spill_cap_usd", "overage_cap_usd"):
        if body.get(cap) is not None:
            usd_amount(body[cap], cap)
    return {k: v for k, v in body.items() if k in SWITCHES}


# ---- one request -------------------------------------------------------------------------------------


@record
class Request:
    state: GatewayState
    actor: str  # key:<admin key id>
    now: float  # float-ok: seconds
    args: tuple[str, ...]  # the path's variable segments, in order
    body: dict[str, Any]
    query: dict[str, str]

    def fields(self, spec: Mapping[str, Field]) -> dict[str, Any]:
        return checked(self.body, spec)

    async def run(self, op: Callable[[Tx], Coroutine[Any, Any, T]]) -> T:
        return await self.state.store.run(op)


Reply = tuple[int, Any]


async def post_org(r: Request) -> Reply:
    b = r.fields({"name": needed(TEXT)})
    return 201, await r.run(lambda tx: admin_sql.create_org(tx, b["name"], r.actor, r.now))


async def post_team(r: Request) -> Reply:
    b = r.fields({"name": needed(TEXT)})
    return 201, await r.run(lambda tx: admin_sql.create_team(tx, r.args[0], b["name"], r.actor, r.now))


async def post_user(r: Request) -> Reply:
    b = r.fields({"name": needed(TEXT), "team": TEXT})
    return 201, await r.run(lambda tx: admin_sql.create_user(tx, r.args[0], b["name"], b.get("team"), r.actor, r.now))


async def put_plan(r: Request) -> Reply:
    name = r.args[0]
    if "name" in r.body and r.body["name"] != name:
        shown = orjson.dumps(r.body["name"]).decode()[:80]
        raise InvalidRequest(f"The plan's name in the body ({shown}) differs from the path's ({name}).", "name")
    spec = {**r.body, "name": name}
    return 200, await r.run(lambda tx: admin_sql.put_plan(tx, spec, r.actor, r.now))


async def get_plans(r: Request) -> Reply:
    return 200, {"data": await r.run(admin_sql.list_plans)}


async def post_payer(r: Request) -> Reply:
    b = r.fields({"org": needed(TEXT), "user": TEXT, "plan": needed(TEXT), **SWITCHES})
    settings = switch_settings(b)
    return 201, await r.run(
        lambda tx: admin_sql.create_payer(tx, b["org"], b.get("user"), b["plan"], settings, r.actor, r.now)
    )


async def get_payer(r: Request) -> Reply:
    return 200, await r.run(lambda tx: admin_sql.payer_json(tx, r.args[0]))


async def patch_payer(r: Request) -> Reply:
    b = r.fields({"plan": TEXT, **SWITCHES})
    changes = {**switch_settings(b), **({"plan": b["plan"]} if "plan" in b else {})}
    return 200, await r.run(lambda tx: admin_sql.set_payer(tx, r.args[0], changes, r.actor, r.now))


async def post_grant(r: Request) -> Reply:
    b = r.fields({"amount_usd": needed(MONEY), "reason": needed(TEXT), "priority": WHOLE, "starts_at": TIME,
                  "expires_at": TIME})  # fmt: skip
    amount = usd_amount(b["amount_usd"], "amount_usd")
    starts = instant(b["starts_at"], "starts_at") if "starts_at" in b else None
    expires = instant(b["expires_at"], "expires_at") if "expires_at" in b else None
    return 201, await r.run(
        lambda tx: admin_sql.add_grant(tx, r.args[0], amount, b["reason"], r.actor, r.now,
                                       priority=b.get("priority", 100), starts_at=starts, expires_at=expires)
    )  # fmt: skip


async def post_topup(r: Request) -> Reply:
    b = r.fields({"amount_usd": needed(MONEY), "reference": needed(TEXT)})
    amount = usd_amount(b["amount_usd"], "amount_usd")
    return 201, await r.run(lambda tx: admin_sql.topup(tx, r.args[0], amount, b["reference"], r.actor, r.now))


async def get_limits(r: Request) -> Reply:
    return 200, await r.run(lambda tx: admin_sql.limits(tx, r.args[0], r.now))


async def post_refund(r: Request) -> Reply:
    b = r.fields({"amount_usd": MONEY, "reason": needed(TEXT)})
    amount = usd_amount(b["amount_usd"], "amount_usd") if "amount_usd" in b else None
    return 200, await r.run(lambda tx: admin_sql.refund_call(tx, r.args[0], amount, b["reason"], r.actor, r.now))


async def post_key(r: Request) -> Reply:
    """Absent ``max_spend_usd`` takes the configured default cap; ``null`` makes an uncapped key."""
    b = r.fields({"name": needed(TEXT), "org": TEXT, "user": TEXT, "service": TEXT, "max_spend_usd": CAP,
                  "admin": FLAG})  # fmt: skip
    cap = r.state.config.default_key_max_spend
    if "max_spend_usd" in b:
        cap = None if b["max_spend_usd"] is None else usd_amount(b["max_spend_usd"], "max_spend_usd")
    req = KeyRequest(b["name"], cap, b.get("admin", False), b.get("org"), b.get("user"), b.get("service"))
    return 201, await create_owned_key(r.state.store, req, r.actor, r.now)


async def get_log(r: Request) -> Reply:
    text = r.query.get("limit", "100")
    limit = int(text) if text.isdigit() else 0
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}, got {text!r}.", "limit")
    return 200, {"data": await r.run(lambda tx: admin_sql.admin_log(tx, limit))}


# ---- routing -----------------------------------------------------------------------------------------


@record
class Route:
    method: str
    pattern: tuple[str, ...]  # "*" matches one non-empty path segment, passed on in ``Request.args``
    handler: Callable[[Request], Awaitable[Reply]]


ROUTES = (
    Route("POST", ("orgs",), post_org),
    Route("POST", ("orgs", "*", "teams"), post_team),
    Route("POST", ("orgs", "*", "users"), post_user),
    Route("PUT", ("plans", "*"), put_plan),
    Route("GET", ("plans",), get_plans),
    Route("POST", ("payers",), post_payer),
    Route("GET", ("payers", "*"), get_payer),
    Route("PATCH", ("payers", "*"), patch_payer),
    Route("POST", ("payers", "*", "grants"), post_grant),
    Route("POST", ("payers", "*", "topups"), post_topup),
    Route("GET", ("payers", "*", "limits"), get_limits),
    Route("POST", ("calls", "*", "refund"), post_refund),
    Route("POST", ("keys",), post_key),
    Route("GET", ("log",), get_log),
)


def _matches(pattern: tuple[str, ...], parts: list[str]) -> tuple[str, ...] | None:
    if len(pattern) != len(parts) or not all(p == s or (p == "*" and s) for p, s in zip(pattern, parts, strict=True)):
        return None
    return tuple(s for p, s in zip(pattern, parts, strict=True) if p == "*")


def find_route(method: str, path: str) -> tuple[Route, tuple[str, ...]]:
    parts = path[len(PREFIX) :].split("/")
    found = [(route, args) for route in ROUTES if (args := _matches(route.pattern, parts)) is not None]
    for route, args in found:
        if route.method == method:
            return route, args
    if found:
        raise MethodNotAllowed(method, path, [route.method for route, _ in found])
    raise NotFound(f"{path} is not a fairmeter admin route (docs/funding.md lists them).")


async def json_object(scope: Scope, receive: Receive, limit: int) -> dict[str, Any]:
    raw = await read_body(scope, receive, limit)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


async def handle_admin(state: GatewayState, scope: Scope, receive: Receive, send: Send) -> None:
    request_id = state.new_call_id()
    try:
        key = await state.authenticate(scope["headers"])
        if not key.admin:
            raise AdminRequired(
                f"The admin API needs an admin key (made with 'fairmeter keys create --admin'); {key.id} is not one."
            )
        await state.settled()  # a refund or a limit read sees every call whose response was sent as settled
        method: str = scope["method"]
        route, args = find_route(method, scope["path"])
        body = await json_object(scope, receive, state.config.max_body_bytes) if method != "GET" else {}
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
        status, out = await route.handler(Request(state, f"key:{key.id}", state.clock.now(), args, body, query))
    except FairmeterError as exc:
        status, headers, err = render("openai", request_id, exc)
        await send_whole(send, status, headers, err)
        return
    except ClientGone:
        return
    await send_whole(send, status, [(b"content-type", b"application/json")], orjson.dumps(out))
