"""A stateful property test of the ledger and the funding buckets (hypothesis ``RuleBasedStateMachine``).

It interleaves holds, settlements, voids, lease lapses (settled at an estimate), grants, grant
expiries, top-ups, refunds, switch changes and clock advances on a real database, and after every
step checks: debits equal credits; no bucket is negative; no window, spill cap or overage cap is
exceeded; each hold took the buckets in burn order (against an independent greedy model of the
rooms the API reports); and each settlement's explanation names exactly what was posted.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule, run_state_machine_as_test

from fairmeter.ledger.funding import Size
from fairmeter.ledger.verify import verify_books
from fairmeter.money import parse_usd, to_nano, usd_text
from fairmeter.store import admin_sql, funding_sql, open_store

pytest_plugins = ("tests.pg",)
USD = 1_000_000_000
START = datetime(2026, 11, 25, 12, 0, tzinfo=UTC).timestamp()
PLAN = {
    "name": "sub",
    "windows": [
        {"name": "5h", "kind": "block", "hours": 5, "limit_usd": "3"},
        {"name": "weekly", "kind": "weekly", "anchor": "monday 09:00", "limit_usd": "10"},
    ],
    "spill_to_credits": True,
    "spill_cap_usd": "6",
    "spill_period": "day",
    "overage_enabled": False,
    "overage_cap_usd": "2",
    "overage_period": "month",
}
# Dimes up to $3 fill windows and grants within a few steps; odd amounts test the rounding edges.
amounts = st.integers(1, 30).map(lambda k: k * USD // 10) | st.integers(min_value=1, max_value=3 * USD)


def nano(text: str) -> int:
    return to_nano(parse_usd(text))


class FundingMachine(RuleBasedStateMachine):
    make_url: Callable[[], str]  # a URL of a fresh, empty database for each example
    calls = Bundle("calls")
    settled = Bundle("settled")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = open_store(self.make_url(), START)
        self.now = START
        self.n = 0
        self.run(lambda tx: admin_sql.create_org(tx, "o", "m", self.now))
        self.run(lambda tx: admin_sql.put_plan(tx, dict(PLAN), "m", self.now))
        self.payer = self.run(lambda tx: admin_sql.create_payer(tx, "o", None, "sub", {}, "m", self.now))["id"]
        self.key = "key:k"
        self.seen: list[dict[str, Any]] = []  # the transfer rows as last read
        self.resolved: set[str] = set()  # calls settled, voided or lapsed

    def teardown(self) -> None:
        self.wait(self.store.close())
        self.loop.close()

    def run(self, op: Any) -> Any:
        return self.wait(self.store.run(op))

    def wait(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def rows(self, sql: str, *args: object) -> list[Any]:
        return list(self.run(lambda tx: tx.fetch(sql, *args)))

    # ---- money in and switches -----------------------------------------------------------------

    @rule(amount=amounts, priority=st.integers(0, 3), ttl_h=st.integers(1, 300))
    def grant(self, amount: int, priority: int, ttl_h: int) -> None:
        self.run(lambda tx: admin_sql.add_grant(tx, self.payer, amount, "promo", "m", self.now, priority=priority,
                                     expires_at=self.now + ttl_h * 3600))  # fmt: skip

    @rule(amount=amounts)
    def topup(self, amount: int) -> None:
        self.run(lambda tx: admin_sql.topup(tx, self.payer, amount, "inv", "m", self.now))

    @rule(spill=st.booleans(), overage=st.booleans())
    def switches(self, spill: bool, overage: bool) -> None:
        self.run(lambda tx: admin_sql.set_payer(tx, self.payer, {"spill_to_credits": spill, "overage_enabled": overage},
                                     "m", self.now))  # fmt: skip

    @rule(minutes=st.integers(1, 3 * 24 * 60))
    def advance(self, minutes: int) -> None:
        self.now += minutes * 60

    @rule()
    def lapse_grants(self) -> None:
        self.run(lambda tx: admin_sql.lapse_grants(tx, self.now))

    # ---- calls -----------------------------------------------------------------------------------

    @rule(target=calls, amount=amounts)
    def hold(self, amount: int) -> Any:
        before = self.run(lambda tx: admin_sql.limits(tx, self.payer, self.now))
        self.n += 1
        cid = f"c{self.n}"
        h = self.run(lambda tx: funding_sql.hold_funding(tx, cid, self.payer, self.key, Size(amount), self.now))
        expected = greedy(before, amount)
        if h.held is None:
            assert expected is None, f"refused although the rooms {before} cover {amount}"
            return None
        got = [(p.bucket.value, p.source, p.amount) for p in h.held.allocation.portions]
        assert got == expected, f"burn order: held {got}, the rooms say {expected}"
        text = funding_sql.allocation_json(h.held.allocation, h.held.spill_start, h.held.overage_start)
        return (cid, text, amount)

    def _settle(self, call: Any, cost: int, void: bool) -> funding_sql.FundingSettled | None:
        if call is None:
            return None
        cid, text, _ = call
        s = self.run(
            lambda tx: funding_sql.settle_funding(tx, cid, self.payer, self.key, text, Size(cost), self.now, void=void)
        )
        self.resolved.add(cid)
        posted: dict[str, int] = {}
        for t in self.wait(self.store.transfers()):
            if t.call_id == cid and t.kind in ("post", "overrun"):
                posted[t.debit_account] = posted.get(t.debit_account, 0) + t.amount
        held = funding_sql.held_from_json(text).allocation
        expired = {r["id"] for r in self.rows("SELECT id FROM grants WHERE expires_at <= $1", self.now)}
        fill, rest = [], 0 if void else cost  # the draw must fill the held portions front to back
        for p in held.portions:
            take = 0 if p.source in expired else min(rest, p.amount)
            rest -= take
            if take:
                fill.append((p.bucket.value, p.source, take))
        if rest == 0:
            assert [(p.bucket.value, p.source, p.amount) for p in s.paid.portions] == fill
        claimed: dict[str, int] = {}
        for p in s.paid.portions:
            acct = funding_sql.bucket_account(self.payer, p)
            claimed[acct] = claimed.get(acct, 0) + p.amount
        assert posted == claimed
        assert sum(posted.values()) == (0 if void else cost)
        said = sorted(to_nano(parse_usd(x)) for x in re.findall(r"\$([0-9.]+) from", s.explanation))
        assert said == sorted(p.amount for p in s.paid.portions), s.explanation
        if void or cost == 0:
            assert s.explanation == "Nothing was charged."
        self.run(
            lambda tx: tx.execute(
                "INSERT INTO calls (id, key_id, provider, api, status, started_at, payer_id, paid_json)"
                " VALUES ($1, 'k', 'openai', 'chat', 'ok', $2, $3, $4)",
                cid, self.now, self.payer, funding_sql.paid_json(s),
            )
        )  # fmt: skip
        return s

    @rule(target=settled, call=consumes(calls), share=st.fractions(0, 1))
    def settle(self, call: Any, share: Any) -> Any:
        cost = int(call[2] * share) if call else 0
        return call[0] if self._settle(call, cost, void=False) and cost else None

    @rule(call=consumes(calls))
    def void(self, call: Any) -> None:
        self._settle(call, 0, void=True)

    @rule(target=settled, call=consumes(calls))
    def lease_lapses(self, call: Any) -> Any:
        """A forwarded call whose process died: settled at its estimate (here a third of the hold)."""
        if call is None:
            return None
        self._settle(call, call[2] // 3, void=False)
        return call[0] if call[2] // 3 else None

    @rule(call=settled, share=st.fractions(0, 1))
    def refund(self, call: Any, share: Any) -> None:
        if call is None:
            return
        (row,) = self.rows("SELECT paid_json FROM calls WHERE id = $1", call)
        charged = sum(a for _, _, a in json.loads(row["paid_json"])["portions"])
        done = sum(
            t.amount for t in self.wait(self.store.transfers()) if t.call_id == call and t.kind in ("refund", "regrant")
        )
        amount = int((charged - done) * share)
        if amount <= 0:
            return
        self.run(lambda tx: admin_sql.refund_call(tx, call, amount, "support", "m", self.now))

    # ---- invariants ----------------------------------------------------------------------------

    @invariant()
    def transfers_are_only_added_and_each_hold_is_resolved_once(self) -> None:
        """Append-only: every row read before is still there, unchanged; a settled call's funding holds are each
        referenced by exactly one post (what the bucket paid) or void (it paid nothing), no other hold by any."""
        rows = self.rows("SELECT * FROM transfers ORDER BY id")
        assert rows[: len(self.seen)] == self.seen
        self.seen = rows
        refs: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            if r["pending_id"] is not None:
                refs.setdefault(r["pending_id"], []).append(r)
        for h in (r for r in rows if r["kind"] == "hold"):
            mine = refs.pop(h["id"], [])
            assert h["state"] == "pending" and len(mine) == (h["call_id"] in self.resolved), (h, mine)
            for r in mine:
                assert r["kind"] in ("post", "void") and (r["kind"] == "void") == (r["amount"] == 0), r
                assert r["debit_account"] == h["debit_account"] and r["amount"] <= h["amount"], (h, r)
        assert not refs, refs  # nothing references anything but a hold

    @invariant()
    def books_balance_and_nothing_is_negative_or_over(self) -> None:
        balanced, _, problems = verify_books(self.wait(self.store.accounts()), self.wait(self.store.transfers()))
        assert balanced, problems
        for a in self.wait(self.store.accounts()):
            if a.id.startswith(("grant:", "credits:")):
                assert a.credits_posted - a.debits_posted - a.debits_pending >= 0, a
        limits = {w["name"]: nano(w["limit_usd"]) for w in PLAN["windows"]}  # type: ignore[index]
        for r in self.rows("SELECT window_name, used, held FROM window_usage"):
            assert r["held"] >= 0 and r["used"] >= 0 and r["used"] + r["held"] <= limits[r["window_name"]], r
        caps = {"spill": nano("6"), "overage": nano("2")}
        for r in self.rows("SELECT what, used, held FROM period_usage"):
            assert r["held"] >= 0 and r["used"] >= 0 and r["used"] + r["held"] <= caps[r["what"]], r


def greedy(limits: dict[str, Any], amount: int) -> list[tuple[str, str, int]] | None:
    """The burn order from what /limits reports, computed independently of the allocator."""
    rooms: list[tuple[str, str, int]] = []
    windows = limits["windows"]
    if windows:
        rooms.append(("subscription", "subscription", min(nano(w["remaining"]) for w in windows)))
    spill = limits["spill_to_credits"]
    if spill["enabled"]:
        cap = None if spill["remaining_usd"] is None else nano(spill["remaining_usd"])
        for g in limits["grants"]:  # listed in burn order; the machine's grants start when issued
            rooms.append(("grants", g["id"], nano(g["remaining_usd"])))
        rooms.append(("credits", "credits", nano(limits["credits"]["remaining_usd"])))
    else:
        cap = None
    over = limits["overage"]
    if over["enabled"]:
        rooms.append(("overage", "overage", amount if over["remaining_usd"] is None else nano(over["remaining_usd"])))
    out = []
    rest = amount
    for bucket, source, room in rooms:
        take = min(rest, room)
        if bucket in ("grants", "credits") and cap is not None:
            take = min(take, cap)
            cap -= take
        if take > 0:
            out.append((bucket, source, take))
            rest -= take
    return out if rest == 0 else None


def _sqlite_url() -> str:
    return f"sqlite:///{Path(tempfile.mkdtemp(prefix='fm-machine-')) / 'm.db'}"


def test_the_funding_machine_on_sqlite() -> None:
    FundingMachine.make_url = staticmethod(_sqlite_url)  # type: ignore[method-assign]
    run_state_machine_as_test(FundingMachine, settings=settings(max_examples=80, stateful_step_count=50, deadline=None))


@pytest.mark.postgres
def test_the_funding_machine_on_postgres(new_pg_url: Callable[[], str]) -> None:
    """Each example on a fresh schema of the run's database."""
    FundingMachine.make_url = staticmethod(new_pg_url)  # type: ignore[method-assign]
    run_state_machine_as_test(FundingMachine, settings=settings(max_examples=25, stateful_step_count=40, deadline=None))


def test_usd_text_is_what_the_machine_parses() -> None:
    assert usd_text(1_500_000_000) == "$1.50" and nano("1.50") == 1_500_000_000
