"""bench/bare_proxy.py --ledger: the floor of a metering proxy commits each call's hold before it is forwarded
and settles the calls answered since, in that same transaction; a hold that does not fit under the cap fails."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from fairmeter.testing import EmulatorServer

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from bare_proxy import FloorLedger  # noqa: E402
from procs import Server, free_port  # noqa: E402


def read(path: Path) -> tuple[tuple[int, int], list[tuple[str, int, int, str]]]:
    """What another connection sees: committed rows only."""
    with sqlite3.connect(path) as db:
        account = db.execute("SELECT pending, posted FROM account").fetchone()
        calls = db.execute("SELECT * FROM calls ORDER BY id").fetchall()
    return account, calls


def test_a_hold_is_committed_before_forwarding_and_settled_with_the_next(tmp_path: Path) -> None:
    path = tmp_path / "floor.db"
    ledger = FloorLedger(str(path))
    first = ledger.hold()
    assert read(path) == ((FloorLedger.HOLD, 0), [(first, FloorLedger.HOLD, 0, "pending")])
    ledger.answered.append(first)  # its answer was relayed
    second = ledger.hold()
    account, calls = read(path)
    assert account == (FloorLedger.HOLD, FloorLedger.COST)
    assert calls == [(first, FloorLedger.HOLD, FloorLedger.COST, "ok"), (second, FloorLedger.HOLD, 0, "pending")]
    assert ledger.answered == []


def test_a_hold_over_the_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "floor.db"
    ledger = FloorLedger(str(path))
    ledger.db.execute("UPDATE account SET cap = ?", (FloorLedger.HOLD,))
    ledger.hold()
    with pytest.raises(RuntimeError, match="cap reached"):
        ledger.hold()
    assert not ledger.db.in_transaction
    assert read(path)[0] == (FloorLedger.HOLD, 0)


def test_the_floor_proxy_on_the_gateways_own_http_layers(emulator: EmulatorServer, tmp_path: Path) -> None:
    """`bare_proxy.py --client fairmeter --ledger FILE`, the proxy `bench/overhead.py --with-floor` measures: the
    official SDK's calls go through it unchanged, and each one's hold is committed, then settled by the next."""
    port = free_port()
    argv = [sys.executable, str(BENCH / "bare_proxy.py"), "--port", str(port), "--client", "fairmeter"]
    argv += ["--ledger", str(tmp_path / "floor.db"), "--upstream", emulator.origin, "--api-key", "sk-floor"]
    proxy = Server("floor", argv, port, tmp_path / "floor.log")
    try:
        proxy.wait_listening()
        assert "bare proxy (fairmeter) with a floor ledger listening" in (tmp_path / "floor.log").read_text()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
        first = client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=20)
        assert first.usage is not None and first.usage.prompt_tokens > 0
        account, calls = read(tmp_path / "floor.db")
        assert account == (FloorLedger.HOLD, 0) and [c[3] for c in calls] == ["pending"]
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
        assert chunks and chunks[0].choices[0].delta is not None  # a stream, relayed as it came
        account, calls = read(tmp_path / "floor.db")
        assert account == (FloorLedger.HOLD, FloorLedger.COST)
        assert [c[3] for c in calls] == ["ok", "pending"]
        client.close()
    finally:
        proxy.stop()
