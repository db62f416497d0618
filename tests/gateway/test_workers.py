"""`fairmeter serve --workers 2`: two processes on one port and one SQLite file, driven by the official SDK.

1. Exactness: 200 calls at once against a key whose cap fits about 145 of them. Both workers serve calls, the
   spend never passes the cap, every hold is resolved and the books verify.
2. Supervision: a worker killed with SIGKILL is replaced and the gateway keeps answering; its lapsed hold
   is resolved by the other worker; SIGTERM to the parent stops every worker and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx2 as httpx
import openai
from tests.serve_process import EXE, ServeProcess, write_config

from fairmeter.testing import EmulatorServer

CALLS = 200
# gpt-4o-mini at max_tokens 100 (a hold of about $0.00011): room for some 145 of the 200 calls at once, more
# than either worker receives (the kernel spreads the connections about evenly), so both workers serve some
# and about 55 calls are refused
CAP_USD = "0.016"
PROMPT = [{"role": "user", "content": "Say something about prime numbers."}]
EMULATE = {"x-emulator-latency-ms": "200", "x-emulator-tag": "workers"}


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def create_key(config: Path) -> str:
    out = subprocess.run(
        [EXE, "keys", "create", "--name", "w", "--max-spend-usd", CAP_USD, "--json", "--config", str(config)],
        capture_output=True, text=True, check=True, cwd=config.parent,
    ).stdout  # fmt: skip
    return str(json.loads(out)["key"])


async def flood(origin: str, secret: str) -> list[int]:
    limits = httpx.Limits(max_connections=CALLS, max_keepalive_connections=CALLS)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60)) as http:
        client = openai.AsyncOpenAI(base_url=origin + "/v1", api_key=secret, max_retries=0, http_client=http)

        async def one() -> int:
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=PROMPT, max_tokens=100, extra_headers=EMULATE
                )
            except openai.APIStatusError as err:
                assert err.response.json()["error"]["code"] == "budget_exceeded"
                return err.status_code
            return raw.status_code

        return list(await asyncio.gather(*(one() for _ in range(CALLS))))


def test_two_workers_share_one_port_and_keep_the_cap_exact(emulator: EmulatorServer, tmp_path: Path) -> None:
    db = tmp_path / "fm.db"
    config = write_config(tmp_path / "fairmeter.toml", f"sqlite:///{db}", emulator)
    secret = create_key(config)
    gw = ServeProcess(config, tmp_path / "serve.log", "--workers", "2")
    try:
        gw.wait_until_answering()
        assert len(children(gw.proc.pid)) == 2
        statuses = asyncio.run(flood(gw.origin, secret))
    finally:
        code = gw.stop()
    assert code == 0, gw.log.read_text()
    assert 100 <= statuses.count(200) < CALLS and statuses.count(402) == CALLS - statuses.count(200)
    with sqlite3.connect(db) as conn:
        owners = conn.execute("SELECT COUNT(DISTINCT lease_owner) FROM calls WHERE status = 'ok'").fetchone()[0]
        spent, cap = conn.execute(
            "SELECT debits_posted + debits_pending, cap_nano FROM accounts WHERE id LIKE 'key:%'"
        ).fetchone()
        pending = conn.execute("SELECT COUNT(*) FROM calls WHERE status = 'pending'").fetchone()[0]
    assert owners == 2  # both workers served calls
    assert spent <= cap and pending == 0
    done = subprocess.run([EXE, "verify", "--json", "--config", str(config)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["problems"] == []


def test_a_killed_worker_is_replaced_and_its_hold_resolved(emulator: EmulatorServer, tmp_path: Path) -> None:
    db = tmp_path / "fm.db"
    # short leases, so the killed worker's hold lapses within the test
    config = write_config(
        tmp_path / "fairmeter.toml", f"sqlite:///{db}", emulator,
        upstream_timeout_s=2, lease_margin_s=1, expiry_interval_s=0.5,
    )  # fmt: skip
    secret = create_key(config)
    gw = ServeProcess(config, tmp_path / "serve.log", "--workers", "2")
    try:
        gw.wait_until_answering()
        first = sorted(children(gw.proc.pid))
        # a slow call in flight; the client gives up at once, the worker holding it is killed mid-call
        slow = {"x-emulator-latency-ms": "3000", "x-emulator-tag": "workers-kill"}
        client = openai.OpenAI(base_url=gw.origin + "/v1", api_key=secret, max_retries=0, timeout=0.5)
        with contextlib.suppress(openai.APITimeoutError):
            client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=50, extra_headers=slow)
        with sqlite3.connect(db) as conn:
            pending_call = conn.execute("SELECT id, lease_owner FROM calls WHERE status = 'pending'").fetchone()
        assert pending_call is not None
        victim = next(pid for pid in first if pending_call[1].startswith(f"gw_{pid}_"))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = children(gw.proc.pid)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.05)
        assert len(children(gw.proc.pid)) == 2 and victim not in children(gw.proc.pid)
        gw.wait_until_answering()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the other workers expire the lapsed lease
            with sqlite3.connect(db) as conn:
                row = conn.execute(
                    "SELECT status, usage_status, needs_reconciliation FROM calls WHERE id = ?", (pending_call[0],)
                ).fetchone()
            if row[0] != "pending":
                break
            time.sleep(0.1)
        # it had been forwarded: settled at its prompt estimate and flagged, by another worker
        assert row == ("upstream_cut", "unknown", 1)
        workers = children(gw.proc.pid)
    finally:
        code = gw.stop()
    assert code == 0, gw.log.read_text()
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
    done = subprocess.run([EXE, "verify", "--json", "--config", str(config)], capture_output=True, text=True)
    result = json.loads(done.stdout)
    assert result["balanced"] and result["caps_ok"]
