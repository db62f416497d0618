"""The admin commands (orgs, teams, users, plans, payers, grants, credits, refund, limits, admin-log, migrate):
the real console script in a subprocess for the happy paths, ``main()`` in this process for the refusals."""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from tests.admin_helpers import ADMIN, PRO, USD, log_of, paid_call, request, snapshot
from tests.conftest import Gw
from tests.sync_store import SyncStore
from tests.test_cli import FAIRMETER

from fairmeter.cli import main
from fairmeter.ledger.windows import utc_text
from fairmeter.money import usd_text

LOGIN = "ops-person"


def fm(*args: str, url: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`fairmeter ARGS --database-url URL` as the login name LOGIN."""
    env = {k: v for k, v in os.environ.items() if k != "FAIRMETER_CONFIG"} | {"LOGNAME": LOGIN}
    return subprocess.run(
        [FAIRMETER, *args, "--database-url", url], cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def fm_json(*args: str, url: str, cwd: Path, stdin: str | None = None) -> Any:
    proc = fm(*args, "--json", url=url, cwd=cwd, stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def fm_text(*args: str, url: str, cwd: Path) -> str:
    proc = fm(*args, url=url, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_migrate_applies_what_is_missing_then_reports_up_to_date(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/new.db"
    assert fm_text("migrate", url=url, cwd=tmp_path).strip() == "applied m001_core, m002_funding, m003_append_only"
    assert fm_text("migrate", url=url, cwd=tmp_path).strip() == "up to date (3 migrations)"
    assert fm_json("migrate", url=url, cwd=tmp_path) == {
        "applied": [],
        "migrations": ["m001_core", "m002_funding", "m003_append_only"],
    }


def test_every_admin_command_end_to_end(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/fm.db"
    run = {"url": url, "cwd": tmp_path}
    assert fm_text("orgs", "create", "acme", **run).startswith("created organisation org_")
    org = fm_json("orgs", "create", "beta", **run)
    assert org["name"] == "beta"
    team = fm_json("teams", "create", "--org", "acme", "ml", **run)
    alice = fm_json("users", "create", "--org", "acme", "--team", "ml", "alice", **run)
    assert alice["team_id"] == team["id"] and alice["org_id"] == team["org_id"]

    (tmp_path / "pro.json").write_text(json.dumps(PRO))
    assert fm_text("plans", "set", "pro.json", **run).startswith("saved plan pro")
    basic = fm_json("plans", "set", "-", stdin=json.dumps({"name": "basic", "order": ["credits"]}), **run)
    assert basic["order"] == ["credits"] and basic["windows"] == []
    assert [p["name"] for p in fm_json("plans", "list", **run)["data"]] == ["basic", "payg", "pro"]

    payer = fm_json(
        "payers", "create", "--org", "acme", "--plan", "pro", "--spill-to-credits", "on", "--spill-cap-usd", "20", **run
    )
    assert (payer["plan"], payer["spill_to_credits"], payer["spill_cap_usd"], payer["user_id"]) == (
        "pro",
        True,
        "20",
        None,
    )
    own = fm_json("payers", "create", "--org", "acme", "--user", "alice", "--plan", "basic", **run)
    assert own["user_id"] == alice["id"]
    assert fm_json("payers", "show", payer["id"], **run) == payer
    changed = fm_json(
        "payers", "set", payer["id"], "--overage", "on", "--overage-cap-usd", "10", "--spill-cap-usd", "none", **run
    )
    assert (changed["overage_enabled"], changed["overage_cap_usd"], changed["spill_cap_usd"]) == (True, "10", None)
    assert fm_json("payers", "set", own["id"], "--plan", "pro", **run)["plan"] == "pro"

    welcome = fm_json(
        "grants",
        "add",
        payer["id"],
        "--amount-usd",
        "2.5",
        "--reason",
        "welcome",
        "--priority",
        "3",
        "--days",
        "30",
        **run,
    )
    assert welcome["amount_usd"] == "2.5" and welcome["priority"] == 3 and welcome["payer_id"] == payer["id"]
    span = datetime.fromisoformat(welcome["expires_at"]) - datetime.fromisoformat(welcome["starts_at"])
    assert abs(span.total_seconds() - 30 * 86_400) < 0.002
    fixed = fm_json(
        "grants", "add", payer["id"], "--amount-usd", "1", "--reason", "sorry", "--expires", "2099-01-01", **run
    )
    assert fixed["expires_at"] == "2099-01-01T00:00:00.000Z" and fixed["priority"] == 100
    assert "granted $1.00 to" in fm_text("grants", "add", payer["id"], "--amount-usd", "1", "--reason", "x", **run)
    top = fm_json("credits", "topup", payer["id"], "--amount-usd", "12.50", "--reference", "inv-1", **run)
    assert top["amount_usd"] == "12.5" and top["balance_usd"] == "12.5"

    laptop = fm_json("keys", "create", "--name", "laptop", "--org", "acme", "--user", "alice", **run)
    assert (laptop["payer_id"], laptop["user_id"], laptop["service"]) == (own["id"], alice["id"], None)
    batch = fm_json("keys", "create", "--name", "batch", "--org", "acme", "--service", "batch", **run)
    assert (batch["payer_id"], batch["service"]) == (payer["id"], "batch")

    store = SyncStore.open(url)
    try:
        call = paid_call(store, payer["id"], batch["id"], 7 * USD, 7 * USD, time.time())  # $5 subscription, $2 grant
        refunded = fm_json("refund", call, "--amount-usd", "1.5", "--reason", "bad answer", **run)
        assert refunded["refunded_usd"] == "1.5" and [r["bucket"] for r in refunded["returned"]] == ["grants"]
        assert "refunded $0.50 of call" in fm_text("refund", call, "--amount-usd", "0.5", "--reason", "again", **run)
        lim = fm_json("limits", payer["id"], **run)
        assert lim["payer_id"] == payer["id"] and lim["credits"]["remaining_usd"] == "12.5"
        assert [g["remaining_usd"] for g in lim["grants"]] == ["2.5", "1", "1"]

        log = fm_json("admin-log", "--limit", "1000", **run)["data"]
        assert log == log_of(store)[::-1]
        assert {e["actor"] for e in log} == {f"cli:{LOGIN}"}
        assert [e["action"] for e in log[::-1]] == [
            "org.create", "org.create", "team.create", "user.create", "plan.create", "plan.create", "payer.create",
            "payer.create", "payer.update", "payer.update", "grant.issue", "grant.issue", "grant.issue",
            "credits.topup", "key.create", "key.assign", "key.create", "key.assign", "call.refund", "call.refund",
        ]  # fmt: skip
        assert len(fm_json("admin-log", "--limit", "3", **run)["data"]) == 3
        assert f"cli:{LOGIN}" in fm_text("admin-log", **run).splitlines()[0]
    finally:
        store.close()


def test_limits_prints_every_window_and_bucket(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/fm.db"
    run = {"url": url, "cwd": tmp_path}
    fm_text("orgs", "create", "acme", **run)
    (tmp_path / "pro.json").write_text(json.dumps(PRO))
    fm_text("plans", "set", "pro.json", **run)
    payer = fm_json("payers", "create", "--org", "acme", "--plan", "pro", "--spill-to-credits", "on", **run)["id"]
    fm_text(
        "grants", "add", payer, "--amount-usd", "3", "--reason", "welcome", "--expires", "2099-01-01T00:00:30Z", **run
    )
    fm_text("credits", "topup", payer, "--amount-usd", "4", "--reference", "inv", **run)
    key = fm_json("keys", "create", "--name", "k", "--org", "acme", **run)["id"]
    store = SyncStore.open(url)
    try:
        paid_call(store, payer, key, 6 * USD, 6 * USD, time.time())  # $5 subscription, $1 grant
    finally:
        store.close()
    lim = fm_json("limits", payer, **run)
    lines = fm_text("limits", payer, **run).splitlines()
    assert lines[0] == f"payer {payer} on plan pro; burn order: subscription, grants, credits, overage"
    assert lines[1].split() == ["bucket", "used", "held", "limit", "remaining", "resets", "/", "expires"]
    five, weekly = lim["windows"]
    assert lines[2].split()[:7] == ["5-hour", "window", "(5h)", "$5.00", "$0.00", "$5.00", "$0.00"]
    assert lines[2].endswith("resets " + _minute_up(five["resets_at"]))
    assert lines[3].split()[:7] == ["weekly", "window", "(weekly)", "$5.00", "$0.00", "$50.00", "$45.00"]
    assert lines[3].endswith("resets " + _minute_up(weekly["resets_at"]))
    grant = lim["grants"][0]
    assert lines[4].split() == [
        "grant",
        grant["id"],
        "(welcome)",
        "$1.00",
        "$0.00",
        "$3.00",
        "$2.00",
        "expires",
        "2099-01-01",
        "00:01",
        "UTC",
    ], "expiries are rounded up to the minute"
    assert lines[5].split() == ["purchased", "credits", "-", "-", "-", "$4.00", "does", "not", "expire"]
    assert lines[6].split()[:7] == ["spill", "to", "credits", "(on,", "per", "month)", usd_text(USD)]  # the grant's $1
    assert "no cap" in lines[6]
    assert lines[7].split()[:4] == ["overage", "(off,", "per", "month)"]
    assert len(lines) == 8


def _minute_up(stamp: str) -> str:
    return utc_text(datetime.fromisoformat(stamp).timestamp())


# ---------------------------------------------------------------------------------------------- API and CLI together


def test_the_log_names_the_admin_key_for_api_changes_and_the_login_for_cli_changes(gateway: Gw, tmp_path: Path) -> None:
    url = gateway.server.state.config.database_url
    admin_id, admin_secret = gateway.key(admin=True, name="ops")
    fm_text("orgs", "create", "acme", url=url, cwd=tmp_path)
    status, _, team = request(gateway, "POST", ADMIN + "/orgs/acme/teams", admin_secret, {"name": "ml"})
    assert status == 201, team
    fm_text("users", "create", "--org", "acme", "--team", "ml", "alice", url=url, cwd=tmp_path)
    assert [(e["actor"], e["action"]) for e in log_of(gateway.store)] == [
        (f"cli:{LOGIN}", "org.create"),
        (f"key:{admin_id}", "team.create"),
        (f"cli:{LOGIN}", "user.create"),
    ]
    made = json.loads(fm_text("keys", "create", "--name", "k", "--json", url=url, cwd=tmp_path))
    assert request(gateway, "GET", "/fairmeter/v1/calls", made["key"])[0] == 200, "a key made by the CLI works"


# ---------------------------------------------------------------------------------------------- refusals


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A database with organisation acme (user alice) and its payer on plan pro, and beta (no payer); cwd is tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOGNAME", LOGIN)
    monkeypatch.delenv("FAIRMETER_CONFIG", raising=False)
    url = f"sqlite:///{tmp_path}/fm.db"
    (tmp_path / "pro.json").write_text(json.dumps(PRO))
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "float.json").write_text(
        json.dumps({"name": "f", "windows": [{"name": "w", "kind": "block", "limit_usd": 5.5}]})
    )
    for argv in (
        ["orgs", "create", "acme"],
        ["orgs", "create", "beta"],
        ["users", "create", "--org", "acme", "alice"],
        ["plans", "set", "pro.json"],
    ):
        assert main([*argv, "--database-url", url]) == 0
    assert main(["payers", "create", "--org", "acme", "--plan", "pro", "--json", "--database-url", url]) == 0
    payer = log_of_url(url)[-1]["target"]
    return {"url": url, "payer": payer}


def log_of_url(url: str) -> list[dict[str, Any]]:
    store = SyncStore.open(url)
    try:
        return log_of(store)
    finally:
        store.close()


def snapshot_of(url: str) -> dict[str, list[str]]:
    store = SyncStore.open(url)
    try:
        return snapshot(store)
    finally:
        store.close()


P = "{payer}"
# fmt: off
REFUSED: list[tuple[list[str], str]] = [
    (["orgs", "create", "Acme Inc"], "The organisation name must be 1-64 characters"),
    (["orgs", "create", "acme"], "An organisation named 'acme' already exists."),
    (["teams", "create", "--org", "nope", "ml"], "No organisation 'nope'."),
    (["users", "create", "--org", "acme", "--team", "nope", "bob"], "Organisation acme has no team 'nope'."),
    (["plans", "set", "missing.json"], "cannot read the plan file missing.json: No such file or directory"),
    (["plans", "set", "broken.json"], "the plan file broken.json is not valid JSON"),
    (["plans", "set", "list.json"], "must hold one JSON object"),
    (["plans", "set", "float.json"], "windows[0].limit_usd must be a dollar amount"),
    (["payers", "create", "--org", "acme", "--plan", "gold"], "No plan named 'gold'"),
    (["payers", "create", "--org", "acme", "--plan", "pro"], "already has a payer"),
    (["payers", "create", "--org", "acme", "--user", "alice", "--plan", "pro", "--spill-cap-usd", "lots"], "--spill-cap-usd must be a dollar amount"),
    (["payers", "create", "--org", "acme", "--plan", "pro", "--spill-to-credits", "maybe"], "invalid choice: 'maybe'"),
    (["payers", "show", "pay_nope"], "No payer 'pay_nope'."),
    (["payers", "set", P], "Nothing to change"),
    (["payers", "set", P, "--plan", "gold"], "No plan named 'gold'."),
    (["grants", "add", P, "--amount-usd", "0", "--reason", "x"], "A grant must be more than $0."),
    (["grants", "add", P, "--amount-usd", "1.0000000001", "--reason", "x"], "--amount-usd has more than 9 decimal places"),
    (["grants", "add", P, "--amount-usd", "1", "--reason", " "], "A grant needs a reason"),
    (["grants", "add", P, "--amount-usd", "1", "--reason", "x", "--expires", "soon"], "--expires must be an ISO-8601 time"),
    (["grants", "add", P, "--amount-usd", "1", "--reason", "x", "--expires", "2099-01-01", "--days", "3"], "not allowed with argument"),
    (["grants", "add", P, "--amount-usd", "1", "--reason", "x", "--days", "0"], "must be a whole number of days from 1 to 3650"),
    (["grants", "add", P, "--amount-usd", "1", "--reason", "x", "--priority", "-4"], "priority must be from 0"),
    (["grants", "add", "pay_nope", "--amount-usd", "1", "--reason", "x"], "No payer 'pay_nope'."),
    (["credits", "topup", P, "--amount-usd", "-5", "--reference", "inv"], "--amount-usd must be a dollar amount"),
    (["credits", "topup", P, "--amount-usd", "5", "--reference", ""], "A top-up needs a reference"),
    (["refund", "call_nope", "--reason", "x"], "No settled call 'call_nope'"),
    (["limits", "pay_nope"], "No payer 'pay_nope'."),
    (["keys", "create", "--name", "k", "--org", "nope"], "No organisation 'nope'."),
    (["keys", "create", "--name", "k", "--org", "acme", "--user", "alice", "--service", "s"], "a user or to a service, not both"),
    (["keys", "create", "--name", "k", "--org", "beta"], "Organisation beta has no payer yet"),
    (["admin-log", "--limit", "0"], "must be from 1 to 1000"),
]
# fmt: on


@pytest.mark.parametrize(
    ("argv", "sentence"), REFUSED, ids=[" ".join(a[:3]) + f" {i}" for i, (a, _) in enumerate(REFUSED)]
)
def test_a_refused_command_exits_2_with_a_sentence_and_changes_nothing(
    setup: dict[str, str], capsys: pytest.CaptureFixture[str], argv: list[str], sentence: str
) -> None:
    before = snapshot_of(setup["url"])
    capsys.readouterr()
    args = [a.replace(P, setup["payer"]) for a in argv] + ["--database-url", setup["url"]]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse refuses before the command runs
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    assert sentence in err, err
    assert "Traceback" not in err
    assert err.startswith("fairmeter: ") or "usage: fairmeter" in err
    assert snapshot_of(setup["url"]) == before, "a refused command changed something"


def test_money_flags_are_exact_decimal_strings(setup: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    argv = ["credits", "topup", setup["payer"], "--amount-usd", "0.123456789", "--reference", "inv", "--json"]
    assert main([*argv, "--database-url", setup["url"]]) == 0
    out = json.loads(capsys.readouterr().out)
    assert Decimal(out["balance_usd"]) == Decimal("0.123456789")
