"""The SQLite store places and settles an overage-only funding leg directly (`ledger.plans.overage_only`): the
pay-as-you-go plan every new key starts on. Whatever happens around it (switches changed between a hold and its
settlement, costs above the hold, voids, repeats of an idempotency key, several calls in one group commit), the
database must end exactly as the general funding path (`funding_sql.hold_funding`, `plan_settlement`) leaves it:
the same accounts, transfers, period counters and call records, row for row."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from fairmeter.store import admin_sql, open_store
from fairmeter.store import sqlite as sqlite_store
from fairmeter.store.records import CallEnd, CallStart
from fairmeter.store.sqlite import SQLiteStore

NOW = 1_795_000_000.0  # 2026-11-18, a fixed clock: both runs write the same times
CENT = 10_000_000
TABLES = {
    "accounts": "id",
    "transfers": "id",
    "period_usage": "payer_id, what, start",
    "window_usage": "payer_id, window_name, start",
    "calls": "id",
    "idempotency": "key_id, idem_key",
}
# A change to the payer between a group's holds and its settlements (None: no change); each takes the payer off
# the overage-only shape or puts it back.
SWITCHES = st.sampled_from(
    [None, {"overage_cap_usd": "0.5"}, {"overage_cap_usd": None}, {"overage_enabled": False},
     {"overage_enabled": True}, {"spill_to_credits": True}, {"spill_to_credits": False},
     {"overage_period": "day"}, {"spill_period": "week"}]
)  # fmt: skip


@st.composite
def calls(draw: st.DrawFn) -> tuple[int, int, bool, str | None]:
    """W (0: no funding leg is placed), the real cost (above W now and then, often right at its edge), whether
    the call is voided, its Idempotency-Key."""
    held = draw(st.integers(0, 40).map(lambda k: k * CENT) | st.integers(1, 40 * CENT))
    cost = draw(st.integers(0, 50 * CENT) | st.integers(max(0, held - 2), held + 2))
    return held, cost, draw(st.booleans()), draw(st.sampled_from([None, "a", "b"]))


# Each group: its calls, the change, and the seed of the order its calls are settled in (the same in both runs).
GROUPS = st.lists(
    st.tuples(st.lists(calls(), min_size=1, max_size=4), SWITCHES, st.integers(0, 99)), min_size=1, max_size=5
)


def start(n: int, key_id: str, payer_id: str, reserved: int, idem: str | None, at: float) -> CallStart:
    return CallStart(
        id=f"call_{n:03d}", key_id=key_id, provider="openai", api="chat", model="gpt-4o-mini", stream=False,
        reserved=reserved, estimate=reserved // 2, prices_json='{"input": "0.15"}', price_source="test",
        idempotency_key=idem, started_at=at, lease_owner="t", lease_expires_at=at + 600, payer_id=payer_id,
        tokens=100,
    )  # fmt: skip


async def scenario(url: str, groups: list[Any]) -> None:
    """Every group's calls held in one group commit, the payer changed (or not), then settled in shuffled order."""
    store = open_store(url, NOW)
    await store.run(lambda tx: admin_sql.create_org(tx, "acme", "test", NOW))
    payer = (await store.run(lambda tx: admin_sql.create_payer(tx, "acme", None, "payg", {}, "test", NOW)))["id"]
    key, _ = await store.create_key("k", None, False, NOW)
    await store.run(lambda tx: admin_sql.assign_key(tx, key.id, "acme", None, "svc", "test", NOW))
    n = 0
    for g, (calls, switch, seed) in enumerate(groups):
        at = NOW + 3_600 * 24 * 20 * g  # a group in a later month now and then: a new overage period
        starts = []
        for reserved, *_, idem in calls:
            n += 1
            starts.append(start(n, key.id, payer, reserved, idem, at))
        outcomes = await asyncio.gather(*(store.begin_call(s, 86_400) for s in starts))
        if switch is not None:
            await store.run(lambda tx, c=switch, t=at: admin_sql.set_payer(tx, payer, c, "test", t))
        todo = [(s, c) for s, c, o in zip(starts, calls, outcomes, strict=True) if o.kind == "held"]
        random.Random(seed).shuffle(todo)
        ends = []
        for s, (_, cost, void, _) in todo:
            store.mark_forwarded(s.id)
            end = CallEnd("ok", 200, "complete", None, "0.001", cost, False, None, at + 1, tokens=100)
            ends.append(store.finish_call(s.id, end, at + 1, void=void, ride=True))
        await asyncio.gather(*ends)
    await store.close()


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The ledger's tables, with the random ids of keys and payers replaced by their rank (the runs make their own)."""
    db = sqlite3.connect(path)
    try:
        ids = [r[0] for r in db.execute("SELECT id FROM keys UNION ALL SELECT id FROM payers ORDER BY 1")]
        names = {i: f"id{n}" for n, i in enumerate(ids)}

        def plain(value: Any) -> Any:
            if isinstance(value, str):
                for i, name in names.items():
                    value = value.replace(i, name)
            return value

        return {
            t: [tuple(plain(v) for v in row) for row in db.execute(f"SELECT * FROM {t} ORDER BY {order}")]
            for t, order in TABLES.items()
        }
    finally:
        db.close()


def run(groups: list[Any], fast: bool) -> dict[str, list[tuple[Any, ...]]]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.db"
        if fast:
            asyncio.run(scenario(f"sqlite:///{path}", groups))
        else:
            with mock.patch.object(SQLiteStore, "_overage_only", lambda self, payer: False):
                asyncio.run(scenario(f"sqlite:///{path}", groups))
        return dump(path)


@settings(max_examples=60, deadline=None)
@given(GROUPS)
def test_the_overage_only_path_leaves_the_database_as_the_general_path_does(groups: list[Any]) -> None:
    fast, general = run(groups, True), run(groups, False)
    for table in TABLES:
        assert fast[table] == general[table], table


def test_a_pay_as_you_go_call_is_held_and_settled_without_the_general_funding_path(tmp_path: Path) -> None:
    """So the property above compares two different paths: the default plan never reaches the general one."""
    calls = [(2 * CENT, CENT, False, None), (3 * CENT, 0, True, "a"), (CENT, CENT, False, "b")]
    with (
        mock.patch.object(sqlite_store, "hold_funding", side_effect=AssertionError("general hold")),
        mock.patch.object(sqlite_store, "plan_settlement", side_effect=AssertionError("general settlement")),
        mock.patch.object(sqlite_store, "settle_funding", side_effect=AssertionError("general settlement")),
    ):
        asyncio.run(scenario(f"sqlite:///{tmp_path / 'f.db'}", [(calls, None, 1)]))
    rows = dump(tmp_path / "f.db")
    explanations = [(r[0], r[-1]) for r in sqlite3.connect(tmp_path / "f.db").execute(
        "SELECT id, explanation FROM calls ORDER BY id").fetchall()]  # fmt: skip
    assert explanations == [
        ("call_001", "Paid $0.01 from overage (billed later)."),
        ("call_002", "Nothing was charged."),
        ("call_003", "Paid $0.01 from overage (billed later)."),
    ]
    overage = [r for r in rows["accounts"] if r[0].startswith("overage:")]
    assert len(overage) == 1 and overage[0][2:4] == (0, 2 * CENT)  # nothing pending, both costs posted
    periods = rows["period_usage"]
    assert [(r[1], r[3], r[4]) for r in periods] == [("overage", 2 * CENT, 0)]
