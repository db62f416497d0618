"""Holds are exact across processes: 4 OS processes, each with its own PostgresStore and pool, race 250
concurrent holds each against one key whose cap fits only some of them (tests/store/pg_hold_worker.py).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fairmeter.ledger.model import TransferKind, TransferState
from fairmeter.ledger.verify import verify_books
from fairmeter.store.postgres import PostgresStore

pytest_plugins = ("tests.pg",)

WORKER = Path(__file__).with_name("pg_hold_worker.py")
PROCESSES = 4
HOLDS_EACH = 250
CAP = 1_500_000  # holds are 1_000..10_000 nano-USD: about a quarter of the 1000 asked for fit


class Worker:
    """A running pg_hold_worker.py, spoken to one line at a time."""

    def __init__(self, n: int, url: str, stderr: Path) -> None:
        self.stderr = stderr
        with stderr.open("w") as err:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER), url, str(n), str(HOLDS_EACH)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            raise AssertionError(
                f"worker exited ({self.proc.returncode}) without answering:\n{self.stderr.read_text()}"
            )
        return line.strip()

    def finish(self) -> int:
        """Wait for the exit (killing a worker left hanging by a failed test); close the pipes."""
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()


@pytest.mark.postgres
def test_four_processes_never_hold_past_the_cap(pg_url: str, tmp_path: Path) -> None:
    workers = [Worker(n, pg_url, tmp_path / f"worker{n}.err") for n in range(PROCESSES)]
    try:
        # all four opened the store at once on a fresh schema, so they raced to migrate it
        assert [w.line() for w in workers] == ["ready"] * PROCESSES

        async def make_key() -> str:
            store = await PostgresStore.open(pg_url, 0.0)
            try:
                return (await store.create_key("shared", CAP, False, 0.0))[0].id
            finally:
                await store.close()

        key_id = asyncio.run(make_key())
        for w in workers:
            w.send(f"go {key_id}")
        reports: list[dict[str, Any]] = [json.loads(w.line()) for w in workers]

        held = {call_id: amount for r in reports for call_id, amount in r["held"]}
        refused = [tuple(x) for r in reports for x in r["refused"]]
        assert len(held) + len(refused) == PROCESSES * HOLDS_EACH
        assert held and refused
        # the processes really contended for the one account row (a late starter may find it full)
        assert sum(1 for r in reports if r["held"]) >= 2
        for amount, cap, spent, on_hold in refused:
            assert cap == CAP and spent == 0
            assert cap - spent - on_hold < amount  # refused only when it did not fit, by true numbers
            assert on_hold <= CAP
        # everything held is pending at once: it all fits under the cap
        spend = asyncio.run(_spend(pg_url, key_id))
        assert spend == (0, sum(held.values()))
        assert sum(held.values()) <= CAP
        # no hold was released while they ran, so the room only shrank: every refusal, however it
        # interleaved, asked for more than the room that is left at the end (no spurious refusal)
        assert min(amount for amount, *_ in refused) > CAP - sum(held.values())

        for w in workers:
            w.send("settle")
        billed = sum(json.loads(w.line())["billed"] for w in workers)
    finally:
        codes = [w.finish() for w in workers]
    assert codes == [0] * PROCESSES, [w.stderr.read_text() for w in workers]

    async def books() -> None:
        store = await PostgresStore.open(pg_url, 0.0)
        try:
            assert await store.pending_count() == 0
            assert await store.key_spend(key_id) == (billed, 0)
            balanced, caps_ok, problems = verify_books(await store.accounts(), await store.transfers())
            assert balanced and caps_ok and problems == [], problems
            transfers = await store.transfers()
            holds = {t.call_id: t for t in transfers if t.kind is TransferKind.HOLD}
            assert {c: t.amount for c, t in holds.items()} == held
            assert all(t.state is TransferState.POSTED for t in holds.values())
            posts = [t.call_id for t in transfers if t.kind is TransferKind.POST]
            assert sorted(posts) == sorted(held)
        finally:
            await store.close()

    asyncio.run(books())


async def _spend(url: str, key_id: str) -> tuple[int, int]:
    store = await PostgresStore.open(url, 0.0)
    try:
        return await store.key_spend(key_id)
    finally:
        await store.close()
