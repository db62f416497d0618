"""The admin API, ``/fairmeter/v1/admin/…``, on a real gateway on a real port (docs/funding.md, "Admin API and CLI")."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from tests.admin_helpers import ADMIN, PRO, USD, Reply, log_of, paid_call, request, snapshot
from tests.conftest import Gw

from fairmeter.store.records import iso

A = ADMIN


@dataclass
class Admin:
    gw: Gw
    key_id: str
    secret: str

    def __call__(self, method: str, path: str, body: object = None, raw: bytes | None = None) -> Reply:
        return request(self.gw, method, A + path, self.secret, body, raw)

    def ok(self, method: str, path: str, body: object = None, status: int = 200) -> Any:
        got, _, out = self(method, path, body)
        assert got == status, out
        return out


@pytest.fixture
def admin(gateway: Gw) -> Admin:
    key_id, secret = gateway.key(admin=True, name="ops")
    return Admin(gateway, key_id, secret)


@dataclass
class World:
    org: str
    user: str
    payer: str  # the organisation's payer, spill to credits on, capped at $20 a month
    call: str  # a settled call paid $5 by the subscription and $1 by purchased credits


@pytest.fixture
def world(admin: Admin) -> World:
    org = admin.ok("POST", "/orgs", {"name": "acme"}, 201)["id"]
    user = admin.ok("POST", "/orgs/acme/users", {"name": "alice"}, 201)["id"]
    admin.ok("PUT", "/plans/pro", PRO)
    switches = {"spill_to_credits": True, "spill_cap_usd": "20"}
    payer = admin.ok("POST", "/payers", {"org": "acme", "plan": "pro", **switches}, 201)["id"]
    admin.ok("POST", f"/payers/{payer}/topups", {"amount_usd": "10", "reference": "inv-1"}, 201)
    key = admin.ok("POST", "/keys", {"name": "svc", "org": "acme"}, 201)["id"]
    call = paid_call(admin.gw.store, payer, key, 6 * USD, 6 * USD, time.time())
    return World(org, user, payer, call)


def table(gw: Gw, sql: str, *args: object) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = gw.store.run(lambda s: s.run(lambda tx: tx.fetch(sql, *args)))
    return [dict(r) for r in rows]


# ---------------------------------------------------------------------------------------------- happy paths


def test_organisations_teams_and_users(admin: Admin) -> None:
    org = admin.ok("POST", "/orgs", {"name": "acme"}, 201)
    assert org["name"] == "acme" and org["id"].startswith("org_")
    team = admin.ok("POST", "/orgs/acme/teams", {"name": "ml"}, 201)
    assert team["org_id"] == org["id"] and team["name"] == "ml"
    alice = admin.ok("POST", f"/orgs/{org['id']}/users", {"name": "alice", "team": "ml"}, 201)
    assert (alice["org_id"], alice["team_id"], alice["name"]) == (org["id"], team["id"], "alice")
    bob = admin.ok("POST", "/orgs/acme/users", {"name": "bob"}, 201)
    assert bob["team_id"] is None
    assert table(admin.gw, "SELECT id, team_id FROM users ORDER BY name") == [
        {"id": alice["id"], "team_id": team["id"]},
        {"id": bob["id"], "team_id": None},
    ]


def test_plans_are_created_replaced_and_listed(admin: Admin) -> None:
    made = admin.ok("PUT", "/plans/pro", {k: v for k, v in PRO.items() if k != "name"})
    assert made["name"] == "pro" and [w["limit_usd"] for w in made["windows"]] == ["5", "50"]
    assert made["order"] == ["subscription", "grants", "credits", "overage"] and made["grant_days"] == 90
    bigger = {**PRO, "windows": [{"name": "5h", "kind": "block", "hours": 5, "limit_usd": "7.50"}], "grant_days": 30}
    admin.ok("PUT", "/plans/pro", bigger)
    plans = admin.ok("GET", "/plans")["data"]
    assert [p["name"] for p in plans] == ["payg", "pro"]
    assert plans[0]["order"] == ["overage"] and plans[0]["overage_enabled"] is True  # the seeded default, filled in
    assert plans[1]["windows"] == [{"name": "5h", "kind": "block", "hours": 5, "limit_usd": "7.5"}]
    assert plans[1]["grant_days"] == 30
    assert [e["action"] for e in log_of(admin.gw.store)] == ["plan.create", "plan.update"]


def test_payers_are_created_shown_and_changed(admin: Admin) -> None:
    admin.ok("POST", "/orgs", {"name": "acme"}, 201)
    alice = admin.ok("POST", "/orgs/acme/users", {"name": "alice"}, 201)
    admin.ok("PUT", "/plans/pro", PRO)
    org_payer = admin.ok(
        "POST", "/payers", {"org": "acme", "plan": "pro", "spill_to_credits": True, "spill_cap_usd": "20"}, 201
    )
    assert org_payer["user_id"] is None and org_payer["plan"] == "pro"
    assert (org_payer["spill_to_credits"], org_payer["spill_cap_usd"], org_payer["overage_enabled"]) == (
        True,
        "20",
        False,
    )
    own = admin.ok("POST", "/payers", {"org": "acme", "user": "alice", "plan": "payg"}, 201)
    assert own["user_id"] == alice["id"] and own["plan"] == "payg" and own["overage_enabled"] is True
    assert admin.ok("GET", f"/payers/{org_payer['id']}") == org_payer
    changed = admin.ok(
        "PATCH", f"/payers/{org_payer['id']}", {"overage_enabled": True, "overage_cap_usd": "10", "spill_cap_usd": None}
    )
    assert (changed["overage_enabled"], changed["overage_cap_usd"], changed["spill_cap_usd"]) == (True, "10", None)
    assert changed["spill_to_credits"] is True, "a switch not named is kept"
    moved = admin.ok("PATCH", f"/payers/{own['id']}", {"plan": "pro"})
    assert moved["plan"] == "pro" and moved["overage_enabled"] is False, "the new plan's defaults apply"
    assert admin.ok("GET", f"/payers/{org_payer['id']}") == changed


def test_grants_and_topups_show_in_limits(admin: Admin, world: World) -> None:
    expires = datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC)
    first = admin.ok(
        "POST",
        f"/payers/{world.payer}/grants",
        {"amount_usd": "2.50", "reason": "welcome", "priority": 5, "expires_at": "2099-01-02T03:04:05Z"},
        201,
    )
    assert first["amount_usd"] == "2.5" and first["expires_at"] == iso(expires.timestamp())
    assert first["payer_id"] == world.payer and first["priority"] == 5
    now = int(time.time())
    second = admin.ok(
        "POST",
        f"/payers/{world.payer}/grants",
        {"amount_usd": "1", "reason": "sorry", "priority": 1, "starts_at": now, "expires_at": now + 86_400},
        201,
    )
    assert second["starts_at"] == iso(now) and second["expires_at"] == iso(now + 86_400)
    default = admin.ok("POST", f"/payers/{world.payer}/grants", {"amount_usd": "0.000000001", "reason": "x"}, 201)
    assert default["priority"] == 100 and default["amount_usd"] == "0.000000001"
    top = admin.ok("POST", f"/payers/{world.payer}/topups", {"amount_usd": "12.345", "reference": "inv-2"}, 201)
    assert top["amount_usd"] == "12.345" and top["balance_usd"] == "21.345"  # $10 - $1 paid by the call + $12.345
    lim = admin.ok("GET", f"/payers/{world.payer}/limits")
    assert lim["payer_id"] == world.payer and lim["plan"] == "pro"
    assert [(w["name"], w["used"], w["remaining"]) for w in lim["windows"]] == [("5h", "5", "0"), ("weekly", "5", "45")]
    assert [g["id"] for g in lim["grants"]] == [second["id"], first["id"], default["id"]], "in burn order"
    assert [g["remaining_usd"] for g in lim["grants"]] == ["1", "2.5", "0.000000001"]
    assert lim["credits"] == {"remaining_usd": "21.345"}
    spill = lim["spill_to_credits"]
    assert (spill["enabled"], spill["cap_usd"], spill["used_usd"], spill["remaining_usd"]) == (True, "20", "1", "19")


def test_a_refund_goes_back_to_the_buckets_that_paid(admin: Admin, world: World) -> None:
    part = admin.ok("POST", f"/calls/{world.call}/refund", {"amount_usd": "0.75", "reason": "bad answer"})
    assert part == {
        "call_id": world.call,
        "refunded_usd": "0.75",
        "returned": [{"bucket": "credits", "source": "credits", "amount_usd": "0.75"}],
    }
    assert admin.ok("GET", f"/payers/{world.payer}/limits")["credits"]["remaining_usd"] == "9.75"
    rest = admin.ok("POST", f"/calls/{world.call}/refund", {"reason": "still bad"})
    assert rest["refunded_usd"] == "5.25"
    assert [(r["bucket"], r["amount_usd"]) for r in rest["returned"]] == [("credits", "0.25"), ("subscription", "5")]
    lim = admin.ok("GET", f"/payers/{world.payer}/limits")
    assert lim["credits"]["remaining_usd"] == "10" and lim["windows"][0]["used"] == "0"
    status, _, body = admin("POST", f"/calls/{world.call}/refund", {"reason": "again"})
    assert status == 400 and "at most 0 USD more" in body["error"]["message"]


def test_keys_are_made_assigned_and_work(admin: Admin) -> None:
    admin.ok("POST", "/orgs", {"name": "acme"}, 201)
    admin.ok("POST", "/orgs/acme/users", {"name": "alice"}, 201)
    admin.ok("PUT", "/plans/pro", PRO)
    org_payer = admin.ok("POST", "/payers", {"org": "acme", "plan": "pro"}, 201)["id"]
    own = admin.ok("POST", "/payers", {"org": "acme", "user": "alice", "plan": "pro"}, 201)["id"]
    laptop = admin.ok("POST", "/keys", {"name": "alice-laptop", "org": "acme", "user": "alice"}, 201)
    assert laptop["key"].startswith("fm-") and laptop["payer_id"] == own and laptop["service"] is None
    assert laptop["max_spend_usd"] is None and laptop["admin"] is False
    assert request(admin.gw, "GET", "/fairmeter/v1/calls", laptop["key"])[0] == 200, "the new key works"
    batch = admin.ok("POST", "/keys", {"name": "batch", "org": "acme", "service": "batch", "max_spend_usd": "3"}, 201)
    assert (batch["payer_id"], batch["service"], batch["user_id"]) == (org_payer, "batch", None)
    rows = table(admin.gw, "SELECT id, org_id, user_id, service, payer_id, admin FROM keys WHERE name != 'ops'")
    assert {r["id"]: (r["service"], r["payer_id"], r["admin"]) for r in rows} == {
        laptop["id"]: (None, own, 0),
        batch["id"]: ("batch", org_payer, 0),
    }
    caps = table(admin.gw, "SELECT cap_nano FROM accounts WHERE id = $1", f"key:{batch['id']}")
    assert caps == [{"cap_nano": 3 * USD}]
    ops = admin.ok("POST", "/keys", {"name": "ops2", "admin": True}, 201)
    assert (ops["org_id"], ops["payer_id"], ops["service"]) == ("org_default", "pay_default", "default")
    assert request(admin.gw, "GET", A + "/plans", ops["key"])[0] == 200, "an admin key made here is an admin key"
    assert laptop["key"] not in json.dumps(log_of(admin.gw.store)), "the log never holds a secret"


def test_the_log_records_the_admin_key_for_every_change(admin: Admin, world: World) -> None:
    admin.ok("POST", f"/payers/{world.payer}/grants", {"amount_usd": "1", "reason": "promo"}, 201)
    admin.ok("POST", f"/calls/{world.call}/refund", {"reason": "r"})
    log = admin.ok("GET", "/log")["data"]
    assert [e["action"] for e in log[::-1]] == [
        "org.create", "user.create", "plan.create", "payer.create", "credits.topup", "key.create", "key.assign",
        "grant.issue", "call.refund",
    ]  # fmt: skip
    assert {e["actor"] for e in log} == {f"key:{admin.key_id}"}
    assert log == log_of(admin.gw.store)[::-1]
    assert log[0]["target"] == world.call and log[0]["detail"] == {"amount_usd": "6", "reason": "r"}
    assert [e["id"] for e in admin.ok("GET", "/log?limit=2")["data"]] == [e["id"] for e in log[:2]]


# ---------------------------------------------------------------------------------------------- admin only


def every_route(w: World) -> list[tuple[str, str, object]]:
    """One well-formed request per route (each would succeed with an admin key)."""
    return [
        ("POST", "/orgs", {"name": "beta"}),
        ("POST", "/orgs/acme/teams", {"name": "ml"}),
        ("POST", "/orgs/acme/users", {"name": "bob"}),
        ("PUT", "/plans/gold", {"windows": []}),
        ("GET", "/plans", None),
        ("POST", "/payers", {"org": "acme", "user": "alice", "plan": "pro"}),
        ("GET", f"/payers/{w.payer}", None),
        ("PATCH", f"/payers/{w.payer}", {"overage_enabled": True}),
        ("POST", f"/payers/{w.payer}/grants", {"amount_usd": "5", "reason": "promo"}),
        ("POST", f"/payers/{w.payer}/topups", {"amount_usd": "5", "reference": "inv-9"}),
        ("GET", f"/payers/{w.payer}/limits", None),
        ("POST", f"/calls/{w.call}/refund", {"reason": "bad"}),
        ("POST", "/keys", {"name": "sneaky", "admin": True}),
        ("GET", "/log", None),
    ]


def test_every_route_needs_an_admin_key_and_a_refusal_changes_nothing(admin: Admin, world: World) -> None:
    user_id, user_secret = admin.gw.key(name="plain")
    before = snapshot(admin.gw.store)
    for method, path, body in every_route(world):
        status, headers, out = request(admin.gw, method, A + path, user_secret, body)
        assert status == 403, (method, path, out)
        assert out["error"]["code"] == "admin_required" and headers["x-should-retry"] == "false"
        assert user_id in out["error"]["message"] and "keys create --admin" in out["error"]["message"]
        for secret in (None, "fm-notAKey"):
            status, _, out = request(admin.gw, method, A + path, secret, body)
            assert status == 401 and out["error"]["code"] == "invalid_api_key", (method, path)
    assert snapshot(admin.gw.store) == before
    for method, path, body in every_route(world):  # the same requests succeed with the admin key
        status, _, out = admin(method, path, body)
        assert status in (200, 201), (method, path, out)
    assert len(log_of(admin.gw.store)) == len(before["admin_log"]) + 11  # a new key: key.create and key.assign


# ---------------------------------------------------------------------------------------------- bad input

# fmt: off
BAD: list[tuple[str, str, object, int, str | None, str]] = [
    # (method, path ({payer}, {call} filled in), body (bytes: sent raw), status, param, part of the sentence)
    ("POST", "/orgs", b"{not json", 400, None, "not valid JSON"),
    ("POST", "/orgs", b"", 400, None, "not valid JSON"),
    ("POST", "/orgs", [{"name": "x"}], 400, None, "must be a JSON object"),
    ("POST", "/orgs", {}, 400, "name", "name is required"),
    ("POST", "/orgs", {"name": 5}, 400, "name", "name must be a string (got 5)"),
    ("POST", "/orgs", {"name": "beta", "colour": "red"}, 400, "colour", "Unknown field(s) ['colour']"),
    ("POST", "/orgs", {"name": "Beta Inc"}, 400, "name", "The organisation name must be 1-64 characters"),
    ("POST", "/orgs", {"name": "acme"}, 400, "name", "already exists"),
    ("POST", "/orgs/nope/teams", {"name": "ml"}, 404, None, "No organisation 'nope'"),
    ("POST", "/orgs/acme/users", {"name": "bob", "team": "nope"}, 404, None, "has no team 'nope'"),
    ("POST", "/orgs/acme/users", {"name": "alice"}, 400, "name", "already has a user named 'alice'"),
    ("PUT", "/plans/pro", {"name": "gold"}, 400, "name", "differs from the path's (pro)"),
    ("PUT", "/plans/pro", {"windows": 3}, 400, None, "windows must be a list"),
    ("PUT", "/plans/pro", {"windows": [{"name": "w", "kind": "block", "limit_usd": 5.5}]}, 400, None, "limit_usd must be a dollar amount"),
    ("PUT", "/plans/pro", {"tier": "gold"}, 400, None, "unknown plan field(s) ['tier']"),
    ("PUT", "/plans/Pro", {}, 400, None, "name must be 1-64 characters"),
    ("POST", "/payers", {"org": "acme", "plan": "gold"}, 404, None, "No plan named 'gold'"),
    ("POST", "/payers", {"org": "acme", "plan": "pro"}, 400, None, "already has a payer"),
    ("POST", "/payers", {"org": "acme", "user": "ghost", "plan": "pro"}, 404, None, "has no user 'ghost'"),
    ("POST", "/payers", {"org": "acme", "plan": "pro", "user": "alice", "spill_cap_usd": 20}, 400, "spill_cap_usd", "must be a dollar amount written as a string"),
    ("POST", "/payers", {"org": "acme", "plan": "pro", "user": "alice", "spill_cap_usd": "-3"}, 400, "spill_cap_usd", "must be a dollar amount"),
    ("POST", "/payers", {"plan": "pro"}, 400, "org", "org is required"),
    ("GET", "/payers/pay_nope", None, 404, None, "No payer 'pay_nope'"),
    ("PATCH", "/payers/{payer}", {"spill_to_credits": "yes"}, 400, "spill_to_credits", "must be true or false"),
    ("PATCH", "/payers/{payer}", {}, 400, None, "Nothing to change"),
    ("PATCH", "/payers/{payer}", {"spill_period": "fortnight"}, 400, None, "spill_period must be one of"),
    ("PATCH", "/payers/{payer}", {"plan": "gold"}, 404, None, "No plan named 'gold'"),
    ("PATCH", "/payers/{payer}", {"grants": ["gr_x"]}, 400, "grants", "Unknown field(s) ['grants']"),
    ("PATCH", "/payers/pay_nope", {"plan": "pro"}, 404, None, "No payer 'pay_nope'"),
    ("POST", "/payers/{payer}/grants", {"amount_usd": 5, "reason": "x"}, 400, "amount_usd", "written as a string"),
    ("POST", "/payers/{payer}/grants", {"amount_usd": 5.5, "reason": "x"}, 400, "amount_usd", "written as a string"),
    ("POST", "/payers/{payer}/grants", {"amount_usd": "0", "reason": "x"}, 400, "amount_usd", "more than $0"),
    ("POST", "/payers/{payer}/grants", {"amount_usd": "-1", "reason": "x"}, 400, "amount_usd", "must be a dollar amount"),
    ("POST", "/payers/{payer}/grants", {"amount_usd": "abc", "reason": "x"}, 400, "amount_usd", "must be a dollar amount"),
    ("POST", "/payers/{payer}/grants", {"amount_usd": "NaN", "reason": "x"}, 400, "amount_usd", "must be a dollar amount"),
    ("POST", "/payers/{payer}/grants", {"amount_usd": "1e400", "reason": "x"}, 400, "amount_usd", "at most $1,000,000,000"),
    ("POST", "/payers/{payer}/grants", {"amount_usd": "0.0000000001", "reason": "x"}, 400, "amount_usd", "more than 9 decimal places"),
    ("POST", "/payers/{payer}/grants", {"amount_usd": "5", "reason": " "}, 400, "reason", "needs a reason"),
    ("POST", "/payers/{payer}/grants", {"amount_usd": "5"}, 400, "reason", "reason is required"),
    ("POST", "/payers/{payer}/grants", {"amount_usd": "5", "reason": "x", "priority": 1.5}, 400, "priority", "whole number"),
    ("POST", "/payers/{payer}/grants", {"amount_usd": "5", "reason": "x", "priority": True}, 400, "priority", "whole number"),
    ("POST", "/payers/{payer}/grants", {"amount_usd": "5", "reason": "x", "priority": -1}, 400, "priority", "priority must be from 0"),
    ("POST", "/payers/{payer}/grants", {"amount_usd": "5", "reason": "x", "expires_at": "next tuesday"}, 400, "expires_at", "ISO-8601"),
    ("POST", "/payers/{payer}/grants", {"amount_usd": "5", "reason": "x", "expires_at": "2001-01-01"}, 400, "expires_at", "must expire after it starts"),
    ("POST", "/payers/{payer}/grants", {"amount_usd": "5", "reason": "x", "starts_at": 0, "expires_at": 60}, 400, "expires_at", "must expire in the future"),
    ("POST", "/payers/{payer}/grants", {"amount_usd": "5", "reason": "x", "expires_at": 1e300}, 400, "expires_at", "ISO-8601"),
    ("POST", "/payers/pay_nope/grants", {"amount_usd": "5", "reason": "x"}, 404, None, "No payer 'pay_nope'"),
    ("POST", "/payers/{payer}/grants", {"amount_usd": "5", "reason": "x", "payer_id": "pay_other"}, 400, "payer_id", "Unknown field(s) ['payer_id']"),
    ("POST", "/payers/{payer}/topups", {"amount_usd": "5"}, 400, "reference", "reference is required"),
    ("POST", "/payers/{payer}/topups", {"amount_usd": "5", "reference": ""}, 400, "reference", "needs a reference"),
    ("POST", "/payers/{payer}/topups", {"amount_usd": "0", "reference": "inv"}, 400, "amount_usd", "more than $0"),
    ("GET", "/payers/pay_nope/limits", None, 404, None, "No payer 'pay_nope'"),
    ("POST", "/calls/call_nope/refund", {"reason": "x"}, 404, None, "No settled call 'call_nope'"),
    ("POST", "/calls/{call}/refund", {"reason": "x", "amount_usd": "6.01"}, 400, "amount_usd", "at most 6 USD more"),
    ("POST", "/calls/{call}/refund", {"amount_usd": "1"}, 400, "reason", "reason is required"),
    ("POST", "/keys", {"name": "k", "org": "nope"}, 404, None, "No organisation 'nope'"),
    ("POST", "/keys", {"name": "k", "org": "acme", "user": "ghost"}, 404, None, "has no user 'ghost'"),
    ("POST", "/keys", {"name": "k", "org": "acme", "user": "alice", "service": "s"}, 400, "service", "a user or to a service, not both"),
    ("POST", "/keys", {"name": "k", "org": "acme", "service": "Big Batch"}, 400, "service", "The service name must be"),
    ("POST", "/keys", {"name": "k", "admin": "yes"}, 400, "admin", "must be true or false"),
    ("POST", "/keys", {"name": ""}, 400, "name", "needs a name"),
    ("POST", "/keys", {"name": "k", "max_spend_usd": 3}, 400, "max_spend_usd", "written as a string"),
    ("GET", "/log?limit=0", None, 400, "limit", "from 1 to 1000"),
    ("GET", "/log?limit=abc", None, 400, "limit", "from 1 to 1000"),
    ("GET", "/log?limit=1001", None, 400, "limit", "from 1 to 1000"),
    ("GET", "/orgs", None, 405, None, "/fairmeter/v1/admin/orgs takes POST, not GET"),
    ("DELETE", "/payers/{payer}", None, 405, None, "takes GET or PATCH, not DELETE"),
    ("POST", "/grants/gr_x/transfer", {"payer": "pay_other"}, 404, None, "is not a fairmeter admin route"),
    ("GET", "/orgs//teams", None, 404, None, "is not a fairmeter admin route"),
]
# fmt: on


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param", "sentence"),
    BAD,
    ids=[f"{m} {p} {i}" for i, (m, p, *_) in enumerate(BAD)],
)
def test_bad_input_is_refused_with_a_sentence_and_changes_nothing(
    admin: Admin, world: World, method: str, path: str, body: object, status: int, param: str | None, sentence: str
) -> None:
    before = snapshot(admin.gw.store)
    path = path.format(payer=world.payer, call=world.call)
    got, headers, out = admin(method, path, raw=body) if isinstance(body, bytes) else admin(method, path, body)
    assert got == status, out
    err = out["error"]
    assert err["code"] == {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}[status]
    if status == 405:  # the methods the path takes, in the Allow header too
        assert headers["allow"] == ("POST" if path.endswith("/orgs") else "GET, PATCH")
    assert sentence in err["message"], err["message"]
    assert err["message"].endswith("."), err["message"]
    if param is not None:
        assert err["param"] == param
    assert headers["x-should-retry"] == "false"
    assert snapshot(admin.gw.store) == before, "a refused request changed something"


# ---------------------------------------------------------------------------------------------- grants stay put


def test_a_grant_belongs_to_one_payer_and_cannot_be_moved(admin: Admin, world: World) -> None:
    other = admin.ok("POST", "/payers", {"org": "acme", "user": "alice", "plan": "pro", "spill_to_credits": True}, 201)
    grant = admin.ok("POST", f"/payers/{world.payer}/grants", {"amount_usd": "3", "reason": "promo"}, 201)["id"]
    assert [g["id"] for g in admin.ok("GET", f"/payers/{world.payer}/limits")["grants"]] == [grant]
    assert admin.ok("GET", f"/payers/{other['id']}/limits")["grants"] == []
    before = snapshot(admin.gw.store)
    attempts: list[tuple[str, str, object]] = [
        ("PATCH", f"/payers/{other['id']}", {"grants": [grant]}),
        ("POST", f"/payers/{other['id']}/grants", {"grant_id": grant, "amount_usd": "3", "reason": "move"}),
        ("PATCH", f"/grants/{grant}", {"payer_id": other["id"]}),
        ("PUT", f"/grants/{grant}", {"payer_id": other["id"]}),
        ("POST", f"/grants/{grant}/transfer", {"to": other["id"]}),
    ]
    for method, path, body in attempts:
        status, _, out = admin(method, path, body)
        assert status in (400, 404), (method, path, out)
    assert snapshot(admin.gw.store) == before
    assert table(admin.gw, "SELECT payer_id FROM grants WHERE id = $1", grant) == [{"payer_id": world.payer}]
    assert admin.ok("GET", f"/payers/{other['id']}/limits")["grants"] == []
