"""One gateway-like process for test_pg_processes: its own PostgresStore, many concurrent holds on one key.

Talks to the test over stdin/stdout, one line each way per step:

1. opens the store (so several workers migrate a fresh schema at once), prints ``ready``;
2. reads ``go KEY_ID``, places COUNT holds at once (asyncio.gather), prints a JSON line
   ``{"held": [[call_id, amount], ...], "refused": [[amount, cap, spent, held], ...]}``;
3. reads ``settle``, settles every held call at a cost at most its hold, prints ``{"billed": total}``.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys

from fairmeter.store.postgres import PostgresStore
from fairmeter.store.records import CallEnd, CallStart


async def main(url: str, worker: int, count: int) -> None:
    store = await PostgresStore.open(url, 0.0)
    try:
        print("ready", flush=True)
        command, key_id = (await asyncio.to_thread(sys.stdin.readline)).split()
        assert command == "go", command
        rng = random.Random(worker)
        calls = [
            CallStart(
                f"w{worker}_{n:03d}", key_id, "openai", "chat", "m", False, rng.randint(1_000, 10_000), 0,
                None, None, None, 1.0, f"worker-{worker}", 60.0,
            )
            for n in range(count)
        ]  # fmt: skip
        outcomes = await asyncio.gather(*(store.begin_call(c, 60) for c in calls))
        held = [c for c, o in zip(calls, outcomes, strict=True) if o.kind == "held"]
        refused = [o.refused for o in outcomes if o.refused is not None]
        assert len(held) + len(refused) == count
        report = {
            "held": [[c.id, c.reserved] for c in held],
            "refused": [[r.amount, r.cap, r.spent, r.held] for r in refused],
        }
        print(json.dumps(report), flush=True)

        assert (await asyncio.to_thread(sys.stdin.readline)).strip() == "settle"
        costs = {c.id: c.reserved * rng.randint(0, 100) // 100 for c in held}
        await asyncio.gather(
            *(
                store.finish_call(c.id, CallEnd("ok", 200, "complete", None, None, costs[c.id], False, None, 2.0), 2.0)
                for c in held
            )
        )
        print(json.dumps({"billed": sum(costs.values())}), flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
