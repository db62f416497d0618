"""Leases: a hold whose gateway process died is resolved by the rules, at start and periodically."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import time
from decimal import Decimal
from pathlib import Path

from tests.conftest import UPSTREAM_KEY, gateway_config
from tests.serve_process import EXE, ServeProcess, write_config
from tests.sync_store import SyncStore

from fairmeter.config import Config
from fairmeter.gateway.server import GatewayServer
from fairmeter.store import Store, open_store, run_with
from fairmeter.store.protocol import CallPage
from fairmeter.store.records import CallStart
from fairmeter.testing import EmulatorServer
from fairmeter.verify import verify_store


def _orphan_hold(database_url: str, start: CallStart, forwarded: bool) -> None:
    """A hold left behind by a dead gateway process, written through a connection of its own.

    The forwarded mark is queued, not waited for; closing the store commits it.
    """

    async def hold(store: Store) -> None:
        assert (await store.begin_call(start, 86400)).kind == "held"
        if forwarded:
            store.mark_forwarded(start.id)

    run_with(open_store(database_url, time.time()), hold)


def _lapsed(key_id: str, call_id: str, idempotency_key: str | None = None, stream: bool = True) -> CallStart:
    """A call of the dead process ``gw_dead`` whose lease has run out."""
    now = time.time()
    return CallStart(
        call_id, key_id, "openai", "chat", "gpt-4o-mini", stream, 50_000, 7_000, None, None, idempotency_key,
        now - 60, "gw_dead", now - 1,
    )  # fmt: skip


def test_lapsed_holds_are_resolved_at_start(emulator: EmulatorServer, tmp_path: Path) -> None:
    config = gateway_config(emulator, tmp_path / "fm.db")
    store = SyncStore.open(config.database_url)
    key, _ = store.create_key("k", 10**9, False, time.time())
    _orphan_hold(config.database_url, _lapsed(key.id, "call_never_forwarded"), forwarded=False)
    _orphan_hold(config.database_url, _lapsed(key.id, "call_forwarded"), forwarded=True)
    assert store.key_spend(key.id) == (0, 100_000)
    store.close()
    with GatewayServer(config):
        store = SyncStore.open(config.database_url)  # the test's own connection
        rows = {r["id"]: r for r in store.list_calls(CallPage(limit=10))}
        voided, settled = rows["call_never_forwarded"], rows["call_forwarded"]
        assert voided["billed_nano"] == 0 and voided["usage_status"] == "error"
        assert not voided["needs_reconciliation"]
        assert settled["billed_nano"] == 7_000 and settled["usage_status"] == "unknown"
        assert settled["needs_reconciliation"] and settled["estimated"]
        assert store.key_spend(key.id) == (7_000, 0)
        result = store.run(verify_store)
        assert result["balanced"] and result["caps_ok"] and result["pending_calls"] == 0
        assert [p["call_id"] for p in result["problems"]] == ["call_forwarded"]
        assert result["problems"][0]["kind"] == "needs_reconciliation"
        store.close()


def test_lapsed_holds_are_resolved_periodically(emulator: EmulatorServer, tmp_path: Path) -> None:
    config = gateway_config(emulator, tmp_path / "fm.db", expiry_interval_s=0.1)
    with GatewayServer(config):
        store = SyncStore.open(config.database_url)  # the test's own connection
        key, _ = store.create_key("k", None, False, time.time())
        key_id = key.id
        _orphan_hold(config.database_url, _lapsed(key_id, "call_late"), forwarded=True)
        deadline = time.monotonic() + 5
        while store.key_spend(key_id)[1] != 0:
            assert time.monotonic() < deadline, "the periodic expiry did not run"
            time.sleep(0.05)
        assert store.key_spend(key_id) == (7_000, 0)
        store.close()


def test_kill_9_mid_stream_then_a_new_gateway_settles_the_hold_once(emulator: EmulatorServer, tmp_path: Path) -> None:
    """A real `fairmeter serve` process is killed mid-stream; its lease lapses; the next one resolves it."""
    toml = write_config(
        tmp_path / "fm.toml", f"sqlite:///{tmp_path / 'fm.db'}", emulator,
        upstream_timeout_s=1, lease_margin_s=1, expiry_interval_s=0.2,
    )  # fmt: skip
    made = subprocess.run(
        [EXE, "keys", "create", "--name", "k", "--max-spend-usd", "1", "--json", "--config", str(toml)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    secret = json.loads(made.stdout)["key"]
    proc = ServeProcess(toml, tmp_path / "serve.log")
    try:
        proc.wait_until_answering()
        sock = socket.create_connection(("127.0.0.1", proc.port))
        body = json.dumps(
            {
                "model": "claude-haiku-4-5",
                "max_tokens": 300,
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            }
        ).encode()
        sock.sendall(
            f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: {secret}\r\ncontent-type: application/json\r\n"
            f"x-emulator-chunks: 200\r\nx-emulator-chunk-delay-ms: 50\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        got = b""
        while got.count(b"content_block_delta") < 2:
            got += sock.recv(65536)
        proc.kill_9()
        sock.close()
    finally:
        proc.stop()
    with contextlib.closing(sqlite3.connect(tmp_path / "fm.db")) as db:
        pending = db.execute("SELECT id, forwarded FROM calls WHERE status = 'pending'").fetchall()
    assert len(pending) == 1 and pending[0][1] == 1
    time.sleep(2.2)  # let the dead process's lease lapse (upstream_timeout_s + lease_margin_s)
    from fairmeter.config import load_config

    config: Config = load_config(str(toml), {"FM_UP": UPSTREAM_KEY}, tmp_path)
    with GatewayServer(config):
        store = SyncStore.open(config.database_url)  # the test's own connection
        call = store.get_call(pending[0][0])
        assert call is not None and call["status"] != "pending"
        assert call["needs_reconciliation"] == 1 and call["usage_status"] == "unknown"
        transfers = [t for t in store.transfers() if t.call_id == pending[0][0]]
        spend = [t.kind.value for t in transfers if t.debit_account.startswith("key:")]
        funding = [(t.kind.value, t.debit_account, t.amount) for t in transfers if t.credit_account.startswith("key:")]
        assert spend == ["hold", "expire"]  # settled once, at its estimate
        assert funding == [  # the payer's pay-as-you-go bucket funded the hold, then exactly the estimate
            ("hold", "overage:pay_default", call["reserved_nano"]),
            ("post", "overage:pay_default", call["billed_nano"]),
        ]
        result = store.run(verify_store)
        assert result["balanced"] and result["caps_ok"] and result["pending_calls"] == 0
        assert Decimal(store.key_spend(call["key_id"])[0]) == call["billed_nano"]
        store.close()


def test_upstream_timeout_is_configurable_and_flags_the_call(emulator: EmulatorServer, tmp_path: Path) -> None:
    import openai

    config = gateway_config(emulator, tmp_path / "fm.db", upstream_timeout_s=0.3)
    with GatewayServer(config) as gw:
        store = SyncStore.open(config.database_url)  # the test's own connection
        key, secret = store.create_key("k", None, False, time.time())
        headers = {"x-emulator-latency-ms": "1500", "Idempotency-Key": "t-1", "x-emulator-tag": "timeout"}
        with openai.OpenAI(base_url=gw.openai_base_url, api_key=secret, max_retries=0) as client:
            replies = []
            for _ in range(2):  # the second, with the same key, gets the same answer, not a 409
                try:
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=20,
                        extra_headers=headers,
                    )  # fmt: skip
                    raise AssertionError("expected a 504")
                except openai.APIStatusError as exc:
                    replies.append(exc)
            assert [r.status_code for r in replies] == [504, 504]
            call_id = replies[0].response.headers["fairmeter-call-id"]
            assert replies[1].response.headers["fairmeter-replay-of"] == call_id
            assert emulator.stats()["tags"]["timeout"]["requests"] == 1
        row = store.get_call(call_id)
        assert row is not None and row["status"] == "upstream_error" and row["usage_status"] == "unknown"
        assert row["needs_reconciliation"] == 1 and row["estimated"] == 1
        assert store.key_spend(key.id) == (row["billed_nano"], 0)
        store.close()


def test_a_retry_of_a_call_its_dead_gateway_never_answered_is_told_plainly(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    import openai

    config = gateway_config(emulator, tmp_path / "fm.db")
    store = SyncStore.open(config.database_url)
    key, secret = store.create_key("k", None, False, time.time())
    store.close()
    _orphan_hold(config.database_url, _lapsed(key.id, "call_orphan", "same-key", stream=False), forwarded=True)
    with (
        GatewayServer(config) as gw,
        openai.OpenAI(base_url=gw.openai_base_url, api_key=secret, max_retries=3) as client,
    ):
        try:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                extra_headers={"Idempotency-Key": "same-key", "x-emulator-tag": "orphan-retry"},
            )  # fmt: skip
            raise AssertionError("expected a 409")
        except openai.ConflictError as exc:
            assert exc.response.headers.get("x-should-retry") == "false"
            assert "call_orphan" in exc.message and "new Idempotency-Key" in exc.message
    assert "orphan-retry" not in emulator.stats()["tags"]
