"""Ledger benchmark: hold + settle pairs per second through the Store, on SQLite and on PostgreSQL.

Each pair is what one call costs the ledger: `begin_call` (idempotency check, the key's cap, the payer's
funding buckets, the call record) then `finish_call` (post the cost in burn order, release the rest).
Workers are asyncio tasks in one process (concurrency 1 or 64), on uvloop, the event loop `fairmeter serve`
runs the store on; on PostgreSQL also 4 processes (replicas) sharing the database. Calls are spread over 64
payers, or all on one hot payer. The hot payer is also run with `batch=False` (one transaction per hold and
per settlement), the naive baseline, in the same run.

    .venv/bin/python bench/ledger.py                       # SQLite, and PostgreSQL when reachable
    .venv/bin/python bench/ledger.py --seconds 5 --json out.json

Nothing asserts a timing; the run ends with `verify` on each database (books balanced, nothing pending).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from fairmeter.store import Store, admin_sql, open_store
from fairmeter.store.records import CallEnd, CallStart
from fairmeter.verify import verify_store

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
HOLD = 2_000_000  # $0.002 worst case
COST = 700_000  # $0.0007 real cost


@dataclass
class Point:
    backend: str
    replicas: int
    concurrency: int
    payers: str
    batch: bool
    pairs: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.pairs / self.seconds


async def setup(url: str, payers: int, tag: str) -> list[str]:
    """``payers`` organisations on the pay-as-you-go plan, one key each; returns the keys' ids."""
    store = open_store(url, time.time())
    keys = []
    now = time.time()
    for i in range(payers):
        name = f"b{tag}{i}"
        await store.run(lambda tx, n=name: admin_sql.create_org(tx, n, "bench", now))
        await store.run(lambda tx, n=name: admin_sql.create_payer(tx, n, None, "payg", {}, "bench", now))
        key, _ = await store.create_key(name, None, False, now)
        await store.run(lambda tx, k=key.id, n=name: admin_sql.assign_key(tx, k, n, None, "bench", "bench", now))
        keys.append(key.id)
    await store.close()
    return keys


async def pair(store: Store, key_id: str, payer_id: str, owner: str) -> None:
    now = time.time()
    call = CallStart(
        id=f"call_{time.time_ns() // 1000:x}{secrets.token_hex(5)}", key_id=key_id, provider="openai", api="chat",
        model="gpt-4o-mini", stream=False, reserved=HOLD, estimate=COST // 2, prices_json=None, price_source=None,
        idempotency_key=None, started_at=now, lease_owner=owner, lease_expires_at=now + 600, payer_id=payer_id,
        tokens=1500,
    )  # fmt: skip
    outcome = await store.begin_call(call, 86_400)
    if outcome.kind != "held":
        raise RuntimeError(f"hold not placed: {outcome}")
    end = CallEnd("ok", 200, "complete", None, "0.0007", COST, False, None, time.time(), tokens=1000)
    await store.finish_call(call.id, end, time.time())


async def load(
    url: str, keys: list[tuple[str, str]], concurrency: int, seconds: float, batch: bool, barrier: Any = None
) -> int:
    """``concurrency`` workers doing pairs for ``seconds``; the clock starts once the store is open and, with
    ``barrier``, once every replica's is (so no replica's start-up runs inside another's measured time)."""
    store = open_store(url, time.time(), batch=batch)
    await store.start()
    if barrier is not None:
        barrier.wait()
    owner = "bench_" + secrets.token_hex(4)
    done = 0
    stop = time.monotonic() + seconds

    async def worker(i: int) -> None:
        nonlocal done
        key_id, payer_id = keys[i % len(keys)]
        while time.monotonic() < stop:
            await pair(store, key_id, payer_id, owner)
            done += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    await store.close()
    return done


def _replica(
    url: str, keys: list[tuple[str, str]], concurrency: int, seconds: float, batch: bool, out: Any, barrier: Any
) -> None:
    out.put(uvloop.run(load(url, keys, concurrency, seconds, batch, barrier)))


def measure(url: str, keys: list[tuple[str, str]], replicas: int, concurrency: int, seconds: float, batch: bool) -> int:
    if replicas == 1:
        return uvloop.run(load(url, keys, concurrency, seconds, batch))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    barrier = ctx.Barrier(replicas)
    # Each replica starts its workers at its own payer, so 4 replicas × 16 workers cover 64 payers.
    procs = [
        ctx.Process(target=_replica, args=(url, keys[r * concurrency :] + keys[: r * concurrency], concurrency,
                                           seconds, batch, out, barrier))
        for r in range(replicas)
    ]  # fmt: skip
    for p in procs:
        p.start()
    total = sum(out.get(timeout=seconds + 120) for _ in procs)
    for p in procs:
        p.join()
    return total


async def key_payers(url: str, key_ids: list[str]) -> list[tuple[str, str]]:
    store = open_store(url, time.time())
    out = []
    for k in key_ids:
        out.append((k, await store.run(lambda tx, k=k: admin_sql.payer_of_key(tx, k))))
    await store.close()
    return out


def run_backend(name: str, url: str, seconds: float, plan: list[tuple[int, int, str, bool]]) -> list[Point]:
    spread = asyncio.run(key_payers(url, asyncio.run(setup(url, 64, "s"))))
    hot = asyncio.run(key_payers(url, asyncio.run(setup(url, 1, "h"))))
    points = []
    for replicas, conc, payers, batch in plan:
        keys = spread if payers == "64 payers" else hot
        t0 = time.perf_counter()
        pairs = measure(url, keys, replicas, conc, seconds, batch)
        p = Point(name, replicas, conc, payers, batch, pairs, time.perf_counter() - t0)
        print(f"  {name:<10} replicas={replicas} c={conc:<3} {payers:<10} {'batched' if batch else 'naive  '}"
              f" {p.rate:>9,.0f} pairs/s", flush=True)  # fmt: skip
        points.append(p)
    store = open_store(url, time.time())
    result = asyncio.run(_verify(store))
    print(f"  {name}: verify balanced={result['balanced']} pending={result['pending_calls']}", flush=True)
    return points


async def _verify(store: Store) -> dict[str, Any]:
    try:
        return await verify_store(store)
    finally:
        await store.close()


def _admin(sql: str) -> None:
    """Run one statement on the server's admin database."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def pg_database() -> str | None:
    """A fresh database for this run, or None when PostgreSQL is not reachable."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return None
    name = f"fm_bench_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except OSError:
        return None
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    """Drop a database made by :func:`pg_database` (every connection to it closed first)."""
    _admin(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--skip-postgres", action="store_true")
    ap.add_argument("--skip-sqlite", action="store_true")
    a = ap.parse_args()
    print(f"machine: nproc={os.cpu_count()} python {sys.version.split()[0]}; {a.seconds:g} s per point", flush=True)
    points: list[Point] = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        if a.skip_sqlite:
            url = ""
        plan = [(1, 1, "64 payers", True), (1, 64, "64 payers", True), (1, 64, "1 payer", True),
                (1, 64, "1 payer", False)]  # fmt: skip
        if url:
            points += run_backend("sqlite", url, a.seconds, plan)
    pg = None if a.skip_postgres else pg_database()
    if pg is None:
        print("  postgresql: not measured (server unreachable or --skip-postgres)")
    else:
        plan = [(1, 1, "64 payers", True), (1, 64, "64 payers", True), (4, 16, "64 payers", True),
                (4, 16, "1 payer", True), (4, 16, "1 payer", False)]  # fmt: skip
        try:
            points += run_backend("postgresql", pg, a.seconds, plan)
        finally:
            drop_pg_database(pg)
    hot = {(p.backend, p.batch): p.rate for p in points if p.payers == "1 payer" and p.concurrency > 1}
    for backend in ("sqlite", "postgresql"):
        if (backend, True) in hot and (backend, False) in hot:
            ratio = hot[(backend, True)] / hot[(backend, False)]
            print(f"  {backend}: one hot payer, batched / naive = {ratio:.2f}x")
    if a.json:
        a.json.write_text(json.dumps([{**p.__dict__, "rate": p.rate} for p in points], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
