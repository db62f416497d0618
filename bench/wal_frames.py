"""Which pages a call writes on SQLite: WAL frames per commit, by table and index.

Every page a transaction changes is written whole to the WAL at COMMIT (two system calls per frame), and again
into the database by the checkpoint, so the pages a call dirties, not its statements, set most of what the
ledger's commit costs. This runs the store alone with the gateway's pattern at concurrency 1 (a call's hold
commits alone; the forwarded marks and settlements ride, and commit together 5 ms after the first of them),
keeps every frame (no checkpoint runs), and maps each frame's page to its b-tree with SQLite's ``dbstat``
table.

    .venv/bin/python bench/wal_frames.py [--calls 2000]

Nothing is asserted. The call rows carry what the gateway writes for the benchmark's chat completion.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import sqlite3
import struct
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from fairmeter.store.records import CallEnd, CallStart
from fairmeter.store.sqlite import SQLiteStore

PRICES = '{"input": "0.15", "cache_read": "0.075", "output": "0.6", "web_search_per_1k_requests": "10"}'
USAGE = (
    '{"input_tokens":263,"uncached_input_tokens":263,"cache_read_tokens":0,"cache_write_tokens":0,'
    '"cache_write_5m_tokens":0,"cache_write_1h_tokens":0,"output_tokens":12,"reasoning_tokens":0,'
    '"web_search_requests":0,"input_audio_tokens":0,"output_audio_tokens":0}'
)
BREAKDOWN = '{"input":"0.00003945","output":"0.0000072"}'
WAL_HEADER, FRAME_HEADER = 32, 24


async def run_calls(path: Path, calls: int, copy_to: Path) -> None:
    """``calls`` calls at concurrency 1; the WAL and database are copied before the store closes."""
    store = SQLiteStore(f"sqlite:///{path}", time.time())
    store.db.execute("PRAGMA wal_autocheckpoint=0")  # keep every frame (the serving process checkpoints)
    key, _ = await store.create_key("wal", None, False, time.time())
    pending: list[asyncio.Future[int]] = []
    for i in range(calls):
        now = time.time()
        call = CallStart(
            id=f"call_{time.time_ns() // 1000:x}walframes{i:06x}", key_id=key.id, provider="openai", api="chat",
            model="gpt-4o-mini", stream=False, reserved=497_400, estimate=38_400, prices_json=PRICES,
            price_source="genai-prices", idempotency_key=None, started_at=now, lease_owner="gw_wal",
            lease_expires_at=now + 600, payer_id=key.payer_id, tokens=1_500,
        )  # fmt: skip
        outcome = await store.begin_call(call, 86_400)
        if outcome.kind != "held":
            raise RuntimeError(f"hold not placed: {outcome}")
        store.mark_forwarded(call.id)
        end = CallEnd("ok", 200, "complete", USAGE, "0.00004665", 46_650, False, BREAKDOWN, time.time(), tokens=275)
        pending.append(asyncio.ensure_future(store.finish_call(call.id, end, time.time(), ride=True)))
    await asyncio.gather(*pending)
    shutil.copy(f"{path}-wal", f"{copy_to}-wal")
    shutil.copy(path, copy_to)
    await store.close()


def transactions(wal: bytes) -> list[list[int]]:
    """The page numbers of each committed transaction's frames, in order."""
    page_size = struct.unpack(">I", wal[8:12])[0]
    out, current, off = [], [], WAL_HEADER
    while off + FRAME_HEADER + page_size <= len(wal):
        page, commit = struct.unpack(">II", wal[off : off + 8])
        current.append(page)
        if commit:
            out.append(current)
            current = []
        off += FRAME_HEADER + page_size
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="WAL frames per commit, by b-tree, at the gateway's c=1 pattern")
    ap.add_argument("--calls", type=int, default=2000)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fairmeter-wal-"))
    try:
        copy = tmp / "copy.db"
        uvloop.run(run_calls(tmp / "wal.db", a.calls, copy))
        every = transactions(Path(f"{copy}-wal").read_bytes())
        txs = every[len(every) // 2 :]  # steady state: the later half
        per_call = len(every) / a.calls  # commits per call (a few set-up commits aside)
        db = sqlite3.connect(copy)
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        try:
            where = {p: f"{name} ({kind})" for name, p, kind in db.execute("SELECT name, pageno, pagetype FROM dbstat")}
        except sqlite3.OperationalError as exc:
            print(f"this SQLite has no dbstat table ({exc}); frames are counted, not placed", file=sys.stderr)
            where = {}
        db.close()
        count = collections.Counter(where.get(p, "page 1 (header)" if p == 1 else "other") for t in txs for p in t)
        calls = len(txs) / per_call  # the calls those commits hold
        frames = sum(len(t) for t in txs) / calls
        print(f"{len(txs)} commits, the later half of {a.calls} calls ({per_call:.2f} per call), {page_size} B pages")
        kib = frames * (page_size + FRAME_HEADER) / 1024
        print(f"{frames:.2f} frames per call ({kib:.1f} KiB written to the WAL), {frames / per_call:.2f} per commit")
        for name, n in count.most_common():
            print(f"  {n / calls:5.2f}  {name}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
