"""Funding buckets in a real SQLite file: holds and settlements in burn order, grants, refunds, limits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fairmeter.ledger.explain import refusal_message, state_of
from fairmeter.ledger.funding import BucketKind, Size
from fairmeter.ledger.verify import verify_books
from fairmeter.store import admin_sql, funding_sql, open_store
from fairmeter.store.sql import Tx

T = TypeVar("T")
USD = 1_000_000_000
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC).timestamp()  # a Wednesday
PRO = {
    "name": "pro",
    "windows": [
        {"name": "5h", "kind": "block", "hours": 5, "limit_usd": "5"},
        {"name": "weekly", "kind": "weekly", "anchor": "monday 09:00", "limit_usd": "8"},
    ],
    "spill_to_credits": False,
}


class Books:
    """A migrated database (SQLite or PostgreSQL) and one pro payer with a key; every step is its own transaction."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = open_store(url, NOW)
        self.run(lambda tx: admin_sql.create_org(tx, "acme", "test", NOW))
        self.run(lambda tx: admin_sql.put_plan(tx, dict(PRO), "test", NOW))
        self.payer = self.run(lambda tx: admin_sql.create_payer(tx, "acme", None, "pro", {}, "test", NOW))["id"]
        key, _ = self.wait(self.store.create_key("k", None, False, NOW))
        self.key = key.id
        self.run(lambda tx: admin_sql.assign_key(tx, self.key, "acme", None, "svc", "test", NOW))
        self.n = 0

    def run(self, op: Callable[[Tx], Coroutine[Any, Any, T]]) -> T:
        return self.wait(self.store.run(op))

    def wait(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.wait(self.store.close())
        self.loop.close()

    def call(
        self, held: int, cost: int, now: float = NOW, tokens: int = 0
    ) -> tuple[funding_sql.FundingSettled | None, str]:
        """Hold ``held`` then settle at ``cost``; returns the settlement (None if refused) and the refusal text."""
        self.n += 1
        cid = f"c{self.n}"
        h = self.run(
            lambda tx: funding_sql.hold_funding(tx, cid, self.payer, f"key:{self.key}", Size(held, tokens), now)
        )
        if h.held is None:
            assert h.refusal is not None and h.funding is not None
            tight = h.refusal.tightest
            return None, refusal_message(h.refusal, state_of(tight) if tight else None)
        text = funding_sql.allocation_json(h.held.allocation, h.held.spill_start, h.held.overage_start)
        settled = self.run(
            lambda tx: funding_sql.settle_funding(
                tx, cid, self.payer, f"key:{self.key}", text, Size(cost), now, void=False
            )
        )
        self.run(  # the part of the call record a refund reads
            lambda tx: tx.execute(
                "INSERT INTO calls (id, key_id, provider, api, status, started_at, payer_id, paid_json)"
                " VALUES ($1, $2, 'openai', 'chat', 'ok', $3, $4, $5)",
                cid, self.key, now, self.payer, funding_sql.paid_json(settled),
            )
        )  # fmt: skip
        return settled, ""

    def set(self, **changes: Any) -> None:
        self.run(lambda tx: admin_sql.set_payer(tx, self.payer, changes, "test", NOW))

    def limits(self, now: float = NOW) -> dict[str, Any]:
        return self.run(lambda tx: admin_sql.limits(tx, self.payer, now))

    def check(self) -> None:
        balanced, _, problems = verify_books(self.wait(self.store.accounts()), self.wait(self.store.transfers()))
        assert balanced, problems
        for acct in self.wait(self.store.accounts()):
            if acct.id.startswith(("grant:", "credits:")):
                assert acct.credits_posted - acct.debits_posted - acct.debits_pending >= 0, acct


pytest_plugins = ("tests.pg",)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def books(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Books]:
    url = f"sqlite:///{tmp_path / 'f.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    b = Books(url)
    yield b
    b.close()


def paid(s: funding_sql.FundingSettled | None) -> list[tuple[str, int]]:
    assert s is not None
    return [(p.source, p.amount) for p in s.paid.portions]


def test_subscription_pays_until_its_window_is_full_then_refuses_with_the_reset(books: Books) -> None:
    s, _ = books.call(2 * USD, USD)
    assert paid(s) == [("subscription", USD)]
    assert s is not None and s.explanation.startswith("Paid $1.00 from the subscription (5-hour window: $1.00 of $5.00")
    s, _ = books.call(4 * USD, 4 * USD)
    assert paid(s) == [("subscription", 4 * USD)]
    s, why = books.call(USD // 10, 0)
    assert s is None
    assert why.startswith("5-hour allowance used up: $5.00 of $5.00 used, resets 2026-11-25 17:00 UTC")
    assert "pay-as-you-go credits are off for this account" in why
    books.check()


def test_a_new_block_opens_after_the_last_one_closed_and_the_week_still_counts(books: Books) -> None:
    books.call(5 * USD, 5 * USD)
    later = NOW + 5 * 3600 + 60
    s, _ = books.call(2 * USD, 2 * USD, now=later)
    assert paid(s) == [("subscription", 2 * USD)]
    s, why = books.call(2 * USD, 0, now=later)  # weekly: 7 of 8 used, only $1 left
    assert s is None and why.startswith("weekly allowance has $1.00 left")
    assert "resets 2026-11-30 09:00 UTC" in why
    books.check()


def test_a_call_placed_after_a_later_call_opened_the_block_counts_in_that_block(books: Books) -> None:
    """Calls are stamped when they arrive and placed when they get the payer's lock, so an earlier stamp
    can be placed after a later one opened the block: it counts there, it never opens a second block."""
    books.call(4 * USD, 4 * USD, now=NOW + 1)
    s, why = books.call(2 * USD, 2 * USD, now=NOW)
    assert s is None and why.startswith("5-hour allowance has $1.00 left"), why
    assert [(w["used"], w["resets_at"]) for w in books.limits(NOW + 2)["windows"][:1]] == [
        ("4", "2026-11-25T17:00:01.000Z")
    ]
    books.check()


def test_spill_burns_grants_by_priority_then_purchased_credits(books: Books) -> None:
    books.set(spill_to_credits=True)
    first = books.run(lambda tx: admin_sql.add_grant(tx, books.payer, USD, "welcome", "test", NOW, priority=5))
    urgent = books.run(lambda tx: admin_sql.add_grant(tx, books.payer, USD, "sorry", "test", NOW, priority=1))
    books.run(lambda tx: admin_sql.topup(tx, books.payer, 10 * USD, "inv-1", "test", NOW))
    books.call(4 * USD, 4 * USD)  # $1 of room left in the 5-hour window
    s, _ = books.call(4 * USD, 4 * USD)
    assert paid(s) == [("subscription", USD), (urgent["id"], USD), (first["id"], USD), ("credits", USD)]
    assert s is not None and "then $1.00 from grant" in s.explanation and "sorry" in s.explanation
    lim = books.limits()
    assert lim["credits"]["remaining_usd"] == "9"
    assert [g["remaining_usd"] for g in lim["grants"]] == ["0", "0"]  # both used up, listed until they expire
    books.check()


def test_a_cheap_call_is_paid_by_the_subscription_even_when_its_hold_spilled(books: Books) -> None:
    books.set(spill_to_credits=True)
    books.run(lambda tx: admin_sql.topup(tx, books.payer, 10 * USD, "inv-1", "test", NOW))
    books.call(4 * USD, 4 * USD)
    s, _ = books.call(3 * USD, USD // 2)
    assert paid(s) == [("subscription", USD // 2)]
    assert books.limits()["credits"]["remaining_usd"] == "10"
    books.check()


def test_an_expired_grant_is_never_spent_and_its_expiry_is_posted(books: Books) -> None:
    books.set(spill_to_credits=True)
    g = books.run(lambda tx: admin_sql.add_grant(tx, books.payer, USD, "promo", "test", NOW, expires_at=NOW + 60))
    books.call(5 * USD, 5 * USD)
    s, why = books.call(USD // 2, USD // 2, now=NOW + 61)
    assert s is None and "credits and grants have $0.00 left" in why
    assert books.run(lambda tx: admin_sql.lapse_grants(tx, NOW + 61)) == 1
    lapse = [t for t in books.wait(books.store.transfers()) if t.kind == "lapse"]
    assert [(t.debit_account, t.credit_account, t.amount) for t in lapse] == [
        (f"grant:{g['id']}", "expired:grants", USD)
    ]
    assert books.run(lambda tx: admin_sql.lapse_grants(tx, NOW + 120)) == 0  # once
    books.check()


def test_a_grant_that_expires_between_hold_and_settlement_pays_nothing(books: Books) -> None:
    books.set(spill_to_credits=True)
    books.run(lambda tx: admin_sql.add_grant(tx, books.payer, 2 * USD, "promo", "test", NOW, expires_at=NOW + 60))
    books.run(lambda tx: admin_sql.topup(tx, books.payer, 10 * USD, "inv-1", "test", NOW))
    books.call(5 * USD, 5 * USD)
    h = books.run(lambda tx: funding_sql.hold_funding(tx, "x", books.payer, f"key:{books.key}", Size(USD), NOW))
    assert h.held is not None and [p.bucket for p in h.held.allocation.portions] == [BucketKind.GRANTS]
    text = funding_sql.allocation_json(h.held.allocation, None, None)
    s = books.run(
        lambda tx: funding_sql.settle_funding(
            tx, "x", books.payer, f"key:{books.key}", text, Size(USD), NOW + 61, void=False
        )
    )
    assert [p.bucket for p in s.paid.portions] == [BucketKind.CREDITS]  # placed on current room instead
    books.check()


def test_refunds_go_back_to_their_buckets_or_become_a_grant(books: Books) -> None:
    books.set(spill_to_credits=True)
    books.run(lambda tx: admin_sql.topup(tx, books.payer, 10 * USD, "inv-1", "test", NOW))
    books.call(4 * USD, 4 * USD)
    books.call(3 * USD, 3 * USD)  # $1 from the subscription, $2 from credits
    out = books.run(lambda tx: admin_sql.refund_call(tx, "c2", USD + USD // 2, "bad answer", "test", NOW))
    assert [(r["bucket"], r["amount_usd"]) for r in out["returned"]] == [("credits", "1.5")]
    assert books.limits()["credits"]["remaining_usd"] == "9.5"
    later = NOW + 6 * 3600  # the 5-hour block has closed: its share becomes a grant
    out = books.run(lambda tx: admin_sql.refund_call(tx, "c2", None, "still bad", "test", later))
    assert [(r["bucket"], r["amount_usd"], r.get("new_grant")) for r in out["returned"]] == [
        ("credits", "0.5", None),
        ("grants", "1", True),
    ]
    with pytest.raises(Exception, match="at most 0 USD more"):
        books.run(lambda tx: admin_sql.refund_call(tx, "c2", None, "again", "test", later))
    books.check()


def test_a_refund_to_a_live_grant_can_be_spent_again(books: Books) -> None:
    books.set(spill_to_credits=True)
    grant = books.run(lambda tx: admin_sql.add_grant(tx, books.payer, USD, "promo", "test", NOW))["id"]
    books.call(5 * USD, 5 * USD)  # the 5-hour window is full
    s, _ = books.call(USD // 2, USD // 2)
    assert paid(s) == [(grant, USD // 2)]
    assert books.limits()["grants"][0]["remaining_usd"] == "0.5"
    out = books.run(lambda tx: admin_sql.refund_call(tx, "c2", None, "bad answer", "test", NOW))
    assert [(r["bucket"], r["source"], r["amount_usd"]) for r in out["returned"]] == [("grants", grant, "0.5")]
    assert books.limits()["grants"][0]["remaining_usd"] == "1"
    s, _ = books.call(USD, USD)
    assert paid(s) == [(grant, USD)]
    books.check()


def test_limits_agree_with_the_next_call(books: Books) -> None:
    books.call(USD + 123, USD + 123)
    room = books.limits()["windows"][0]["remaining"]
    assert room == "3.999999877"
    nano = 3 * USD + 999_999_877
    s, _ = books.call(nano, nano)
    assert paid(s) == [("subscription", nano)]
    s, why = books.call(1, 1)
    assert s is None and why.startswith("5-hour allowance used up")
    books.check()


def test_every_change_is_logged_with_its_actor(books: Books) -> None:
    log = books.run(lambda tx: admin_sql.admin_log(tx, 100))
    assert [(e["actor"], e["action"]) for e in reversed(log)] == [
        ("test", "org.create"),
        ("test", "plan.create"),
        ("test", "payer.create"),
        ("test", "key.assign"),
    ]


Bad = Callable[[Books], Callable[[Tx], Coroutine[Any, Any, Any]]]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda b: lambda tx: admin_sql.add_grant(tx, b.payer, 0, "x", "t", NOW), "more than $0"),
        (lambda b: lambda tx: admin_sql.add_grant(tx, b.payer, 1, " ", "t", NOW), "needs a reason"),
        (lambda b: lambda tx: admin_sql.add_grant(tx, "pay_nope", 1, "x", "t", NOW), "No payer 'pay_nope'"),
        (lambda b: lambda tx: admin_sql.topup(tx, b.payer, -5, "x", "t", NOW), "more than $0"),
        (lambda b: lambda tx: admin_sql.set_payer(tx, b.payer, {"plan": "gold"}, "t", NOW), "No plan named 'gold'"),
        (
            lambda b: lambda tx: admin_sql.set_payer(tx, b.payer, {"spill_cap_usd": "-2"}, "t", NOW),
            "spill_cap_usd must be",
        ),
        (lambda b: lambda tx: admin_sql.set_payer(tx, b.payer, {"colour": 1}, "t", NOW), "Unknown payer setting"),
        (lambda b: lambda tx: admin_sql.create_payer(tx, "acme", None, "pro", {}, "t", NOW), "already has a payer"),
        (lambda b: lambda tx: admin_sql.put_plan(tx, {"name": "x", "windows": 3}, "t", NOW), "windows must be a list"),
        (lambda b: lambda tx: admin_sql.create_org(tx, "acme", "t", NOW), "already exists"),
        (lambda b: lambda tx: admin_sql.create_org(tx, "Acme Inc", "t", NOW), "The organisation name must be 1-64"),
        (lambda b: lambda tx: admin_sql.create_team(tx, "acme", "", "t", NOW), "The team name must be"),
        (lambda b: lambda tx: admin_sql.add_grant(tx, b.payer, 1, "x", "t", NOW, priority=-1), "priority must be"),
        (
            lambda b: lambda tx: admin_sql.add_grant(tx, b.payer, 1, "x", "t", NOW, starts_at=NOW - 99, expires_at=NOW),
            "must expire in the future",
        ),
        (lambda b: lambda tx: admin_sql.topup(tx, b.payer, 5, " ", "t", NOW), "needs a reference"),
        (lambda b: lambda tx: admin_sql.set_payer(tx, b.payer, {}, "t", NOW), "Nothing to change"),
        (lambda b: lambda tx: admin_sql.assign_key(tx, b.key, "acme", "u", "svc", "t", NOW), "user or to a service"),
    ],
)
def test_bad_admin_input_is_refused_and_changes_nothing(books: Books, bad: Bad, message: str) -> None:
    before = books.run(lambda tx: admin_sql.admin_log(tx, 100))
    with pytest.raises(Exception, match=message.replace("$", r"\$").replace("(", r"\(")):
        books.run(bad(books))
    assert books.run(lambda tx: admin_sql.admin_log(tx, 100)) == before
    books.check()


def test_funding_writes_of_more_rows_than_one_statement_takes_all_land(tmp_path: Path) -> None:
    """SQLite writes each kind of row in multi-row statements of at most ROWS_PER_STATEMENT rows."""
    from fairmeter.store.sql import ROWS_PER_STATEMENT

    store = open_store(f"sqlite:///{tmp_path / 'w.db'}", NOW)
    n = 2 * ROWS_PER_STATEMENT + 7
    writes = funding_sql.Writes()
    for i in range(n):
        writes.account(f"test:{i}", credits_posted=i + 1)
        writes.transfer(f"call_{i}", "post", f"test:{i}", "test:sink", i + 1, "posted", NOW, BucketKind.CREDITS)

    async def flush_and_read(tx: Tx) -> tuple[list[Any], list[Any]]:
        await writes.flush(tx)
        accounts = await tx.fetch("SELECT id, credits_posted FROM accounts WHERE id LIKE 'test:%' ORDER BY id")
        moved = await tx.fetch("SELECT call_id, amount, bucket FROM transfers WHERE debit_account LIKE 'test:%'")
        return accounts, moved

    try:
        accounts, moved = asyncio.run(store.run(flush_and_read))
    finally:
        asyncio.run(store.close())
    assert sorted((a["id"], a["credits_posted"]) for a in accounts) == sorted((f"test:{i}", i + 1) for i in range(n))
    assert sorted((t["call_id"], t["amount"], t["bucket"]) for t in moved) == sorted(
        (f"call_{i}", i + 1, "credits") for i in range(n)
    )
