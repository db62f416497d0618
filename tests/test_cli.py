"""The real `fairmeter` console script in a subprocess, against a temp SQLite file and a running gateway."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from tests.conftest import Gw

from fairmeter.config import DEFAULT_DATABASE_URL
from fairmeter.store.sqlite import sqlite_path

PROMPT = [{"role": "user", "content": "Say something about prime numbers."}]


def _script() -> str:
    beside = Path(sys.executable).parent / "fairmeter"
    found = str(beside) if beside.exists() else shutil.which("fairmeter")
    assert found, "the fairmeter console script is not installed"
    return found


FAIRMETER = _script()


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `fairmeter ARGS` with a clean environment (no FAIRMETER_CONFIG unless given)."""
    base = {k: v for k, v in os.environ.items() if k != "FAIRMETER_CONFIG" and not k.endswith("_API_KEY")}
    return subprocess.run(
        [FAIRMETER, *args], cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=60
    )


def ok_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def db_url(gateway: Gw) -> str:
    """The running gateway's own SQLite file, for the CLI to share."""
    return gateway.server.state.config.database_url


@pytest.fixture
def clients() -> Iterator[list[openai.OpenAI]]:
    made: list[openai.OpenAI] = []
    yield made
    for c in made:
        c.close()


def oai(gw: Gw, secret: str, made: list[openai.OpenAI]) -> openai.OpenAI:
    client = openai.OpenAI(base_url=gw.openai_base_url, api_key=secret, max_retries=0)
    made.append(client)
    return client


def chat(gw: Gw, secret: str, made: list[openai.OpenAI], **kw: Any) -> str:
    kw.setdefault("model", "gpt-4o-mini")
    kw.setdefault("max_tokens", 40)
    raw = oai(gw, secret, made).chat.completions.with_raw_response.create(messages=PROMPT, **kw)
    raw.parse()
    return raw.headers["fairmeter-call-id"]


# ---------------------------------------------------------------------------------------------- keys


def test_keys_create_prints_json_and_the_key_works_with_its_cap(
    gateway: Gw, db_url: str, tmp_path: Path, clients: list[openai.OpenAI]
) -> None:
    made = ok_json(
        run(
            "keys",
            "create",
            "--name",
            "alice",
            "--max-spend-usd",
            "1.50",
            "--json",
            "--database-url",
            db_url,
            cwd=tmp_path,
        )
    )
    assert set(made) == {"id", "key", "name", "max_spend_usd", "admin", "org_id", "user_id", "service", "payer_id"}
    assert (made["org_id"], made["user_id"], made["service"], made["payer_id"]) == (
        "org_default",
        None,
        "default",
        "pay_default",
    ), "a key made without an owner belongs to the default organisation's default service"
    assert made["name"] == "alice" and made["key"].startswith("fm-") and made["id"].startswith("key_")
    assert isinstance(made["max_spend_usd"], str) and Decimal(made["max_spend_usd"]) == Decimal("1.50")
    call_id = chat(gateway, made["key"], clients)
    call = gateway.call(call_id)
    assert call["status"] == "ok" and call["key_id"] == made["id"]
    spent, held = gateway.store.key_spend(made["id"])
    assert spent == int(Decimal(call["billed_usd"]) * 10**9) > 0 and held == 0
    # The cap is real: a call whose worst case is above $1.50 is refused with that cap in the sentence.
    with pytest.raises(openai.APIStatusError) as info:
        chat(gateway, made["key"], clients, model="gpt-4.1", max_tokens=1_000_000)
    assert info.value.status_code == 402 and "$1.5" in info.value.message


def test_keys_create_without_cap_uses_the_config_default(tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    cfg = tmp_path / "fm.toml"
    cfg.write_text(f'database_url = "sqlite:///{db}"\ndefault_key_max_spend_usd = "2.25"\n')
    made = ok_json(run("keys", "create", "--name", "bob", "--json", "--config", str(cfg), cwd=tmp_path))
    assert Decimal(made["max_spend_usd"]) == Decimal("2.25")
    # An explicit --max-spend-usd still wins over the default.
    other = ok_json(
        run(
            "keys", "create", "--name", "carol", "--max-spend-usd", "0.10", "--json", "--config", str(cfg), cwd=tmp_path
        )
    )
    assert Decimal(other["max_spend_usd"]) == Decimal("0.10")
    caps = dict(sqlite3.connect(db).execute("SELECT id, cap_nano FROM accounts WHERE id LIKE 'key:%'").fetchall())
    assert caps == {f"key:{made['id']}": 2_250_000_000, f"key:{other['id']}": 100_000_000}


def test_keys_create_without_cap_or_default_is_uncapped(tmp_path: Path) -> None:
    made = ok_json(
        run("keys", "create", "--name", "dave", "--json", "--database-url", f"sqlite:///{tmp_path}/k.db", cwd=tmp_path)
    )
    assert made["max_spend_usd"] is None


def test_keys_create_text_output_shows_the_key_once(tmp_path: Path) -> None:
    proc = run(
        "keys",
        "create",
        "--name",
        "erin",
        "--max-spend-usd",
        "3",
        "--database-url",
        f"sqlite:///{tmp_path}/k.db",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "fm-" in proc.stdout and "$3" in proc.stdout


@pytest.mark.parametrize("value", ["-1", "abc", "NaN", "Infinity", "1,50", ""])
def test_keys_create_refuses_a_bad_cap(tmp_path: Path, value: str) -> None:
    url = f"sqlite:///{tmp_path}/k.db"
    proc = run(
        "keys", "create", "--name", "x", f"--max-spend-usd={value}", "--json", "--database-url", url, cwd=tmp_path
    )
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "--max-spend-usd" in proc.stderr and repr(value) in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert ok_json(run("keys", "list", "--json", "--database-url", url, cwd=tmp_path)) == []


def test_keys_create_refuses_a_negative_cap_given_as_a_separate_argument(tmp_path: Path) -> None:
    proc = run(
        "keys",
        "create",
        "--name",
        "x",
        "--max-spend-usd",
        "-1",
        "--database-url",
        f"sqlite:///{tmp_path}/k.db",
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "--max-spend-usd" in proc.stderr and "Traceback" not in proc.stderr


def test_keys_list_json(gateway: Gw, db_url: str, tmp_path: Path, clients: list[openai.OpenAI]) -> None:
    a = ok_json(
        run("keys", "create", "--name", "a", "--max-spend-usd", "0.5", "--json", "--database-url", db_url, cwd=tmp_path)
    )
    b = ok_json(run("keys", "create", "--name", "b", "--json", "--admin", "--database-url", db_url, cwd=tmp_path))
    call = gateway.call(chat(gateway, a["key"], clients))
    rows = ok_json(run("keys", "list", "--json", "--database-url", db_url, cwd=tmp_path))
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {a["id"], b["id"]}
    ra, rb = by_id[a["id"]], by_id[b["id"]]
    assert ra["name"] == "a" and ra["admin"] is False and Decimal(ra["max_spend_usd"]) == Decimal("0.5")
    assert ra["spent_usd"] == call["billed_usd"] and ra["held_usd"] == "0" and ra["revoked_at"] is None
    assert rb["admin"] is True and rb["max_spend_usd"] is None and rb["spent_usd"] == "0"
    assert a["key"] not in json.dumps(rows), "keys list must never show a secret"
    assert a["key"].startswith(ra["prefix"])


def test_keys_revoke_stops_the_key_within_a_second(
    gateway: Gw, db_url: str, tmp_path: Path, clients: list[openai.OpenAI]
) -> None:
    made = ok_json(run("keys", "create", "--name", "gone", "--json", "--database-url", db_url, cwd=tmp_path))
    chat(gateway, made["key"], clients)  # the gateway now has the key in its cache
    proc = run("keys", "revoke", made["id"], "--database-url", db_url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    revoked = time.monotonic()
    client = oai(gateway, made["key"], clients)
    while True:
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=5)  # type: ignore[arg-type]
        except openai.AuthenticationError as exc:
            assert exc.code == "invalid_api_key" and made["id"] in exc.message
            break
        assert time.monotonic() - revoked < 1.5, "the revoked key still works after the 1 s key cache"
        time.sleep(0.05)
    rows = ok_json(run("keys", "list", "--json", "--database-url", db_url, cwd=tmp_path))
    assert rows[0]["revoked_at"] is not None
    again = run("keys", "revoke", made["id"], "--database-url", db_url, cwd=tmp_path)
    assert again.returncode == 1 and made["id"] in again.stderr
    unknown = run("keys", "revoke", "key_doesnotexist", "--database-url", db_url, cwd=tmp_path)
    assert unknown.returncode == 1


# ---------------------------------------------------------------------------------------------- calls


def test_calls_list(gateway: Gw, db_url: str, tmp_path: Path, clients: list[openai.OpenAI]) -> None:
    made = ok_json(run("keys", "create", "--name", "c", "--json", "--database-url", db_url, cwd=tmp_path))
    good = [chat(gateway, made["key"], clients) for _ in range(2)]
    with pytest.raises(openai.BadRequestError) as info:
        chat(gateway, made["key"], clients, max_tokens=0)
    bad = info.value.response.headers["fairmeter-call-id"]
    listed = ok_json(run("calls", "list", "--json", "--database-url", db_url, cwd=tmp_path))
    assert [c["id"] for c in listed["data"]] == [bad, *good[::-1]]
    assert listed["data"][1] == gateway.call(good[1])
    only_bad = ok_json(
        run("calls", "list", "--json", "--status", "bad_request", "--database-url", db_url, cwd=tmp_path)
    )
    assert [c["id"] for c in only_bad["data"]] == [bad]
    one = ok_json(run("calls", "list", "--json", "--limit", "1", "--database-url", db_url, cwd=tmp_path))
    assert [c["id"] for c in one["data"]] == [bad]
    table = run("calls", "list", "--database-url", db_url, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert len(lines) == 4 and "billed USD" in lines[0]
    assert all(call_id in table.stdout for call_id in [*good, bad])
    assert bad in lines[1] and "bad_request" in lines[1] and "max_tokens must be at least 1" in lines[1]
    assert good[1] in lines[2] and "gpt-4o-mini" in lines[2] and " ok " in lines[2]
    assert all(line.index("gpt-4o-mini") == lines[0].index("model") for line in lines[2:])  # columns line up


def test_calls_list_takes_the_apis_filters_and_cursors(
    gateway: Gw, db_url: str, tmp_path: Path, clients: list[openai.OpenAI]
) -> None:
    """`fairmeter calls list` shows the list of GET /fairmeter/v1/calls: --key, --since, --until, --cursor."""
    a = ok_json(run("keys", "create", "--name", "a", "--json", "--database-url", db_url, cwd=tmp_path))
    b = ok_json(run("keys", "create", "--name", "b", "--json", "--database-url", db_url, cwd=tmp_path))
    early = [chat(gateway, a["key"], clients), chat(gateway, b["key"], clients)]
    time.sleep(0.05)
    cut = datetime.fromtimestamp(time.time(), tz=UTC).replace(tzinfo=None).isoformat()  # no zone: UTC
    time.sleep(0.05)
    late = [chat(gateway, a["key"], clients) for _ in range(3)]

    def listed(*argv: str) -> dict[str, Any]:
        out = ok_json(run("calls", "list", "--json", *argv, "--database-url", db_url, cwd=tmp_path))
        assert set(out) == {"data", "next"}
        return out  # type: ignore[no-any-return]

    assert [c["id"] for c in listed("--key", b["id"])["data"]] == [early[1]]
    assert [c["id"] for c in listed("--since", cut)["data"]] == late[::-1]
    assert [c["id"] for c in listed("--until", cut)["data"]] == early[::-1]
    assert [c["id"] for c in listed("--key", a["id"], "--until", cut)["data"]] == [early[0]]
    # pages of 2, following the cursor, give every call once, newest first, and end with "next": null
    pages, cursor = [], None
    while True:
        page = listed("--limit", "2", *(["--cursor", cursor] if cursor else []))
        pages.append([c["id"] for c in page["data"]])
        cursor = page["next"]
        if cursor is None:
            break
    assert pages == [late[:0:-1], [late[0], early[1]], [early[0]]]
    # the API hands out the same cursors
    _, admin = gateway.key(admin=True)
    conn = http.client.HTTPConnection("127.0.0.1", gateway.server.port, timeout=10)
    try:
        conn.request("GET", "/fairmeter/v1/calls?limit=2", headers={"authorization": f"Bearer {admin}"})
        api_page = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    assert api_page["next"] == listed("--limit", "2")["next"]
    table = run("calls", "list", "--limit", "2", "--database-url", db_url, cwd=tmp_path)
    assert table.returncode == 0 and table.stdout.splitlines()[-1].startswith(
        "more: the next page is this command with --cursor "
    )
    for argv, said in (
        (["--since", "yesterday"], "--since must be an ISO-8601 time"),
        (["--until", "nan"], "--until must be an ISO-8601 time"),
        (["--cursor", "not-a-cursor"], "--cursor: 'not-a-cursor' is not a cursor"),
    ):
        proc = run("calls", "list", *argv, "--database-url", db_url, cwd=tmp_path)
        assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------------------------- verify


def test_verify_clean_books_exit_0(gateway: Gw, db_url: str, tmp_path: Path, clients: list[openai.OpenAI]) -> None:
    made = ok_json(
        run("keys", "create", "--name", "v", "--max-spend-usd", "1", "--json", "--database-url", db_url, cwd=tmp_path)
    )
    for _ in range(3):
        chat(gateway, made["key"], clients)
    result = ok_json(run("verify", "--json", "--database-url", db_url, cwd=tmp_path))
    assert {"balanced", "caps_ok", "problems"} <= set(result)
    assert result["balanced"] is True and result["caps_ok"] is True and result["problems"] == []
    text = run("verify", "--database-url", db_url, cwd=tmp_path)
    assert text.returncode == 0 and "balanced: True" in text.stdout


def test_verify_a_database_with_only_keys_is_clean(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/new.db"
    ok_json(run("keys", "create", "--name", "k", "--max-spend-usd", "1", "--json", "--database-url", url, cwd=tmp_path))
    result = ok_json(run("verify", "--json", "--database-url", url, cwd=tmp_path))
    assert result["balanced"] is True and result["problems"] == []


def test_verify_reports_an_overrun_and_exits_1(
    gateway: Gw, db_url: str, tmp_path: Path, clients: list[openai.OpenAI]
) -> None:
    made = ok_json(run("keys", "create", "--name", "o", "--json", "--database-url", db_url, cwd=tmp_path))
    # The emulator reports far more output than max_tokens allows: the cost exceeds the hold.
    over = {"x-emulator-usage": json.dumps({"completion_tokens": 5_000_000})}
    call_id = chat(gateway, made["key"], clients, max_tokens=10, extra_headers=over)
    assert gateway.call(call_id)["overrun_usd"] is not None
    proc = run("verify", "--json", "--database-url", db_url, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["balanced"] is True
    overruns = [p for p in result["problems"] if p["kind"] == "overrun"]
    assert len(overruns) == 1 and overruns[0]["call_id"] == call_id
    text = run("verify", "--database-url", db_url, cwd=tmp_path)
    assert text.returncode == 1 and call_id in text.stdout


def test_verify_reports_a_tampered_balance_and_exits_1(
    gateway: Gw, db_url: str, tmp_path: Path, clients: list[openai.OpenAI]
) -> None:
    made = ok_json(run("keys", "create", "--name", "t", "--json", "--database-url", db_url, cwd=tmp_path))
    chat(gateway, made["key"], clients)
    assert run("verify", "--database-url", db_url, cwd=tmp_path).returncode == 0
    with sqlite3.connect(sqlite_path(db_url)) as db:
        db.execute("UPDATE accounts SET debits_posted = debits_posted + 7 WHERE id = ?", (f"key:{made['id']}",))
    proc = run("verify", "--json", "--database-url", db_url, cwd=tmp_path)
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["balanced"] is False
    kinds = {p["kind"] for p in result["problems"]}
    assert {"unbalanced", "balance_mismatch"} <= kinds
    mismatch = [p for p in result["problems"] if p["kind"] == "balance_mismatch"]
    assert mismatch[0]["account"] == f"key:{made['id']}"


def test_verify_reports_a_cap_exceeded_and_exits_1(
    gateway: Gw, db_url: str, tmp_path: Path, clients: list[openai.OpenAI]
) -> None:
    made = ok_json(
        run("keys", "create", "--name", "cap", "--max-spend-usd", "1", "--json", "--database-url", db_url, cwd=tmp_path)
    )
    chat(gateway, made["key"], clients)
    with sqlite3.connect(sqlite_path(db_url)) as db:
        db.execute("UPDATE accounts SET cap_nano = 1 WHERE id = ?", (f"key:{made['id']}",))
    proc = run("verify", "--json", "--database-url", db_url, cwd=tmp_path)
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["balanced"] is True and result["caps_ok"] is False
    assert [p["kind"] for p in result["problems"]] == ["cap_exceeded"]


# ---------------------------------------------------------------------------------------------- config lookup


def test_default_database_is_created_under_the_working_directory(tmp_path: Path) -> None:
    made = ok_json(run("keys", "create", "--name", "d", "--json", cwd=tmp_path))
    path = tmp_path / sqlite_path(DEFAULT_DATABASE_URL)
    assert path.exists()
    ids = [r[0] for r in sqlite3.connect(path).execute("SELECT id FROM keys")]
    assert ids == [made["id"]]


def test_cli_follows_the_config_lookup_order(tmp_path: Path) -> None:
    local_db, env_db, flag_db = tmp_path / "local.db", tmp_path / "env.db", tmp_path / "flag.db"
    (tmp_path / "fairmeter.toml").write_text(f'database_url = "sqlite:///{local_db}"\n')
    env_cfg = tmp_path / "env.toml"
    env_cfg.write_text(f'database_url = "sqlite:///{env_db}"\n')
    flag_cfg = tmp_path / "flag.toml"
    flag_cfg.write_text(f'database_url = "sqlite:///{flag_db}"\n')

    def keys_in(db: Path) -> int:
        return sqlite3.connect(db).execute("SELECT COUNT(*) FROM keys").fetchone()[0] if db.exists() else 0

    ok_json(run("keys", "create", "--name", "1", "--json", cwd=tmp_path))
    assert (keys_in(local_db), keys_in(env_db), keys_in(flag_db)) == (1, 0, 0)
    ok_json(run("keys", "create", "--name", "2", "--json", cwd=tmp_path, env={"FAIRMETER_CONFIG": str(env_cfg)}))
    assert (keys_in(local_db), keys_in(env_db), keys_in(flag_db)) == (1, 1, 0)
    env = {"FAIRMETER_CONFIG": str(env_cfg)}
    ok_json(run("keys", "create", "--name", "3", "--json", "--config", str(flag_cfg), cwd=tmp_path, env=env))
    assert (keys_in(local_db), keys_in(env_db), keys_in(flag_db)) == (1, 1, 1)
    url_db = tmp_path / "url.db"
    ok_json(
        run(
            "keys",
            "create",
            "--name",
            "4",
            "--json",
            "--config",
            str(flag_cfg),
            "--database-url",
            f"sqlite:///{url_db}",
            cwd=tmp_path,
        )
    )
    assert (keys_in(flag_db), keys_in(url_db)) == (1, 1)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("database_url = [", "not valid TOML"),
        ('databse_url = "x"', "databse_url"),
        ("max_request_usd = 0.5", "max_request_usd"),
    ],
    ids=["bad-toml", "unknown-key", "float-money"],
)
def test_a_bad_config_file_exits_2_with_a_message(tmp_path: Path, content: str, needle: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(content + "\n")
    proc = run("keys", "list", "--json", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("fairmeter: ")


def test_a_missing_config_file_exits_2(tmp_path: Path) -> None:
    proc = run("verify", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert proc.returncode == 2 and "nope.toml" in proc.stderr and "Traceback" not in proc.stderr


def test_calls_list_refuses_an_unknown_status(tmp_path: Path) -> None:
    proc = run("calls", "list", "--status", "exploded", "--database-url", f"sqlite:///{tmp_path}/c.db", cwd=tmp_path)
    assert proc.returncode == 2 and "exploded" in proc.stderr


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_calls_list_refuses_a_non_positive_limit(
    gateway: Gw, db_url: str, tmp_path: Path, clients: list[openai.OpenAI], limit: str
) -> None:
    made = ok_json(run("keys", "create", "--name", "l", "--json", "--database-url", db_url, cwd=tmp_path))
    chat(gateway, made["key"], clients)
    proc = run("calls", "list", "--json", f"--limit={limit}", "--database-url", db_url, cwd=tmp_path)
    assert proc.returncode == 2 and "--limit" in proc.stderr


def test_read_commands_refuse_a_database_that_does_not_exist(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/typo.db"
    for argv in (["verify"], ["calls", "list"], ["keys", "list"], ["keys", "revoke", "key_x"]):
        proc = run(*argv, "--database-url", url, cwd=tmp_path)
        assert proc.returncode == 2 and "no fairmeter database" in proc.stderr, argv
    assert not (tmp_path / "typo.db").exists()


@pytest.mark.parametrize("argv", [["serve"], ["keys", "create", "--name", "x"], ["calls", "list"], ["verify"]])
def test_an_unsupported_database_url_exits_2_with_a_message(tmp_path: Path, argv: list[str]) -> None:
    proc = run(*argv, "--database-url", "mysql://root:hunter2@db/fm", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("fairmeter: unsupported database_url mysql://…: expected sqlite:///PATH")
    assert "hunter2" not in proc.stderr


def test_serve_refuses_fewer_than_one_worker(tmp_path: Path) -> None:
    proc = run("serve", "--workers", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--workers must be at least 1; got 0" in proc.stderr


def test_workers_on_a_port_another_program_holds_exit_1_with_a_message(tmp_path: Path) -> None:
    with socket.socket() as taken:  # bound without SO_REUSEPORT: the workers may not share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run("serve", "--workers", "2", "--port", str(port), cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
