"""Funding buckets: burn order, holds that fit exactly, settlements drawn in order, sentences."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from fairmeter.ledger.explain import WindowState, explain_payment, refusal_message
from fairmeter.ledger.funding import (
    DEFAULT_ORDER,
    Allocation,
    BucketKind,
    Funding,
    Grant,
    Portion,
    Refusal,
    Size,
    WindowUse,
    allocate,
    check_order,
    draw,
)
from fairmeter.ledger.windows import Period, Unit, WindowKind, WindowSpec, period_bounds, utc_text, window_start

USD = 1_000_000_000
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC).timestamp()
FIVE_H = WindowSpec("5h", WindowKind.BLOCK, limit=5 * USD)
WEEKLY = WindowSpec("weekly", WindowKind.WEEKLY, limit=50 * USD, anchor_weekday=0, anchor_s=9 * 3600)


def use(spec: WindowSpec, used: int, held: int = 0, start: float = NOW - 3600) -> WindowUse:
    return WindowUse(spec, start, False, used, held)


def grant(gid: str, amount: int, priority: int = 0, expires: float = NOW + 86400, created: float = NOW - 10) -> Grant:
    return Grant(gid, amount, 0, 0, priority, NOW - 100, expires, created, reason=f"{gid} reason")


# ---- windows --------------------------------------------------------------------------------


def test_weekly_window_starts_at_the_anchor() -> None:
    start, opens = window_start(WEEKLY, None, NOW)  # Wednesday 25 Nov 2026 12:00
    assert not opens
    assert utc_text(start) == "2026-11-23 09:00 UTC"  # Monday 09:00
    assert utc_text(start + WEEKLY.span_s) == "2026-11-30 09:00 UTC"


def test_block_opens_with_the_first_call_after_the_last_one_closed() -> None:
    assert window_start(FIVE_H, None, NOW) == (NOW, True)
    assert window_start(FIVE_H, NOW - 3600, NOW) == (NOW - 3600, False)
    assert window_start(FIVE_H, NOW - 5 * 3600, NOW) == (NOW, True)  # closed exactly now
    # a call stamped before the open block began (it waited for the payer's lock) counts in that block
    assert window_start(FIVE_H, NOW + 1, NOW) == (NOW + 1, False)


@given(now=st.floats(min_value=0, max_value=4e9), day=st.integers(0, 6), at=st.integers(0, 86399))
def test_weekly_period_contains_now_and_sits_on_the_anchor(now: float, day: int, at: int) -> None:
    spec = WindowSpec("w", WindowKind.WEEKLY, limit=1, anchor_weekday=day, anchor_s=at)
    start, _ = window_start(spec, None, now)
    assert start <= now < start + spec.span_s
    moment = datetime.fromtimestamp(start, tz=UTC)
    assert moment.weekday() == day and moment.hour * 3600 + moment.minute * 60 + moment.second == at


@given(now=st.floats(min_value=0, max_value=4e9), period=st.sampled_from([Period.DAY, Period.WEEK, Period.MONTH]))
def test_calendar_periods_contain_now(now: float, period: Period) -> None:
    start, end = period_bounds(period, now)
    assert end is not None and start <= now < end
    assert datetime.fromtimestamp(start, tz=UTC).hour == 0


def test_reset_times_are_rounded_up_to_the_minute() -> None:
    assert utc_text(NOW + 1) == "2026-11-25 12:01 UTC"
    assert utc_text(NOW) == "2026-11-25 12:00 UTC"


def test_burn_order_must_not_repeat_a_bucket() -> None:
    assert check_order(["credits", "subscription"]) == (BucketKind.CREDITS, BucketKind.SUBSCRIPTION)
    for bad in (["credits", "credits"], [], ["wallet"]):
        try:
            check_order(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} was accepted")


# ---- holds ----------------------------------------------------------------------------------


def test_hold_that_fits_the_subscription_takes_nothing_else() -> None:
    f = Funding(windows=(use(FIVE_H, 3 * USD), use(WEEKLY, 10 * USD)), credits_room=100 * USD, spill_to_credits=True)
    a = allocate(f, Size(USD), NOW)
    assert isinstance(a, Allocation)
    assert a.portions == (Portion(BucketKind.SUBSCRIPTION, "subscription", USD),)
    assert [w.amount for w in a.windows] == [USD, USD]


def test_hold_spills_to_grants_by_priority_then_expiry_then_credits() -> None:
    grants = (
        grant("late", 1 * USD, priority=0, expires=NOW + 900),
        grant("soon", 1 * USD, priority=0, expires=NOW + 60),
        grant("prio", 1 * USD, priority=1, expires=NOW + 10),
    )
    f = Funding(windows=(use(FIVE_H, 4 * USD),), grants=grants, credits_room=10 * USD, spill_to_credits=True)
    a = allocate(f, Size(5 * USD), NOW)
    assert isinstance(a, Allocation)
    assert [(p.source, p.amount) for p in a.portions] == [
        ("subscription", USD),
        ("soon", USD),
        ("late", USD),
        ("prio", USD),
        ("credits", USD),
    ]


def test_hold_refused_with_the_window_and_the_switch() -> None:
    f = Funding(windows=(use(FIVE_H, 0), use(WEEKLY, 50 * USD)), credits_room=10 * USD, spill_to_credits=False)
    r = allocate(f, Size(USD // 10), NOW)
    assert isinstance(r, Refusal)
    assert r.tightest is not None and r.tightest.spec.name == "weekly"
    weekly = WindowState("weekly", "weekly", Unit.USD, 50 * USD, 0, 50 * USD, NOW + 5 * 86400 - 3 * 3600)
    assert refusal_message(r, weekly) == (
        "weekly allowance used up: $50.00 of $50.00 used, resets 2026-11-30 09:00 UTC; "
        "pay-as-you-go credits are off for this account; overage is off"
    )


def test_expired_and_future_grants_are_never_held() -> None:
    old = Grant("old", USD, 0, 0, 0, NOW - 100, NOW, NOW - 100)  # expired exactly now
    future = Grant("future", USD, 0, 0, 0, NOW + 1, NOW + 100, NOW - 100)
    f = Funding(order=(BucketKind.GRANTS,), grants=(old, future), spill_to_credits=True)
    assert isinstance(allocate(f, Size(1), NOW), Refusal)


def test_token_window_converts_at_the_calls_own_rate() -> None:
    tokens = WindowSpec("tok", WindowKind.BLOCK, limit=1000, unit=Unit.TOKENS)
    f = Funding(windows=(use(tokens, 600),), credits_room=USD, spill_to_credits=True)
    a = allocate(f, Size(1000, tokens=800), NOW)  # room 400 of 800 tokens → half the call
    assert isinstance(a, Allocation)
    assert [(p.bucket, p.amount) for p in a.portions] == [(BucketKind.SUBSCRIPTION, 500), (BucketKind.CREDITS, 500)]
    assert a.windows[0].amount == 400


# ---- properties of holds --------------------------------------------------------------------

spec_st = st.builds(
    WindowSpec,
    name=st.sampled_from(["a", "b", "c"]),
    kind=st.just(WindowKind.BLOCK),
    limit=st.integers(0, 10_000),
    unit=st.sampled_from([Unit.USD, Unit.TOKENS]),
)


@st.composite
def fundings(draw_: st.DrawFn) -> Funding:
    specs = draw_(st.lists(spec_st, max_size=3, unique_by=lambda s: s.name))
    windows = tuple(
        WindowUse(s, NOW - 10, False, draw_(st.integers(0, s.limit)), draw_(st.integers(0, 100))) for s in specs
    )
    grants = tuple(
        Grant(
            f"g{i}",
            draw_(st.integers(0, 5000)),
            draw_(st.integers(0, 100)),
            draw_(st.integers(0, 100)),
            draw_(st.integers(0, 3)),
            NOW - draw_(st.integers(-50, 50)),
            NOW + draw_(st.integers(-50, 500)),
            NOW - draw_(st.integers(0, 500)),
        )
        for i in range(draw_(st.integers(0, 4)))
    )
    order = tuple(draw_(st.permutations(list(DEFAULT_ORDER))))[: draw_(st.integers(1, 4))]
    return Funding(
        order=order,
        windows=windows,
        grants=grants,
        credits_room=draw_(st.integers(0, 5000)),
        spill_to_credits=draw_(st.booleans()),
        spill_room=draw_(st.none() | st.integers(0, 5000)),
        overage_enabled=draw_(st.booleans()),
        overage_room=draw_(st.none() | st.integers(0, 5000)),
    )


sizes = st.builds(Size, usd=st.integers(0, 20_000), tokens=st.integers(0, 20_000))


def _rooms_in_order(f: Funding, size: Size) -> list[tuple[BucketKind, str, int]]:
    """What each source could give, in burn order, ignoring the shared spill cap."""
    from fairmeter.ledger.funding import subscription_room

    out: list[tuple[BucketKind, str, int]] = []
    for b in f.order:
        if b is BucketKind.SUBSCRIPTION and f.windows:
            out.append((b, b.value, subscription_room(f, size)[0]))
        elif b is BucketKind.GRANTS and f.spill_to_credits:
            out += [(b, g.id, g.room(NOW)) for g in f.live_grants(NOW)]
        elif b is BucketKind.CREDITS and f.spill_to_credits:
            out.append((b, b.value, f.credits_room))
        elif b is BucketKind.OVERAGE and f.overage_enabled:
            out.append((b, b.value, size.usd if f.overage_room is None else f.overage_room))
    return out


@given(f=fundings(), size=sizes)
def test_a_hold_is_exact_within_every_room_and_in_burn_order(f: Funding, size: Size) -> None:
    result = allocate(f, size, NOW)
    rooms = {(b, s): r for b, s, r in _rooms_in_order(f, size)}
    if isinstance(result, Refusal):
        assert result.fundable < size.usd  # refused only when the rooms cannot cover it
        assert result.needed == size.usd
        return
    assert result.total == size.usd
    spill = 0
    for p in result.portions:
        assert 0 < p.amount <= rooms[(p.bucket, p.source)]
        spill += p.amount if p.bucket in (BucketKind.GRANTS, BucketKind.CREDITS) else 0
    if f.spill_room is not None:
        assert spill <= f.spill_room
    for charge, w in zip(result.windows, f.windows, strict=True):
        assert charge.amount <= w.room  # no window can pass its limit
    # burn order: a source is used only when every earlier source gave all it could (or the spill cap bit)
    order = list(rooms)
    used = {(p.bucket, p.source): p.amount for p in result.portions}
    last = max((order.index(k) for k in used), default=0)  # nothing used: nothing to check
    for k in order[:last]:
        if k[0] in (BucketKind.GRANTS, BucketKind.CREDITS) and f.spill_room is not None:
            continue
        assert used.get(k, 0) == rooms[k], f"{k} was skipped while it had room"


@given(
    f=fundings(),
    size=sizes,
    actual_usd=st.integers(0, 30_000),
    actual_tokens=st.integers(0, 30_000),
    dead=st.sets(st.sampled_from(["g0", "g1", "g2", "g3"])),
)
def test_settlement_draws_in_order_within_the_hold(
    f: Funding, size: Size, actual_usd: int, actual_tokens: int, dead: set[str]
) -> None:
    held = allocate(f, size, NOW)
    if isinstance(held, Refusal):
        return
    actual = Size(actual_usd, actual_tokens)
    d = draw(held, actual, lambda gid: gid not in dead)
    assert d.paid.total + d.unplaced == actual.usd
    assert d.paid.total + d.released == held.total and d.released >= 0
    held_by = {(p.bucket, p.source): p.amount for p in held.portions}
    for p in d.paid.portions:
        assert p.amount <= held_by[(p.bucket, p.source)]
        assert p.source not in dead
    for charge, h in zip(d.paid.windows, held.windows, strict=True):
        assert charge.amount <= h.amount  # a window is never charged more than it held
    if d.unplaced and not dead and not any(w.unit is Unit.TOKENS for w in held.windows):
        assert actual.usd > held.total  # otherwise only a cost above the hold is left over


@given(sub_used=st.integers(0, 5 * USD), cost=st.integers(0, 5 * USD), w=st.integers(0, 5 * USD))
def test_a_call_costing_less_than_the_subscription_room_is_paid_by_the_subscription_alone(
    sub_used: int, cost: int, w: int
) -> None:
    f = Funding(windows=(use(FIVE_H, sub_used),), credits_room=100 * USD, spill_to_credits=True)
    held = allocate(f, Size(max(w, cost)), NOW)
    assert isinstance(held, Allocation)
    d = draw(held, Size(cost), lambda _: True)
    if cost <= 5 * USD - sub_used:
        assert d.paid.portions == ((Portion(BucketKind.SUBSCRIPTION, "subscription", cost),) if cost else ())


# ---- sentences ------------------------------------------------------------------------------


def test_explanation_of_a_call_paid_by_one_window() -> None:
    paid = Allocation((Portion(BucketKind.SUBSCRIPTION, "subscription", 420_000_000),))
    five = WindowState(
        "5h", "5-hour", Unit.USD, 3_100_000_000, 0, 5 * USD, datetime(2026, 11, 25, 14, tzinfo=UTC).timestamp()
    )
    assert explain_payment(paid, [five], {}) == (
        "Paid $0.42 from the 5-hour window ($3.10 of $5.00 used, resets 2026-11-25 14:00 UTC); "
        "credits untouched because the subscription had room."
    )


def test_explanation_of_a_spill() -> None:
    paid = Allocation(
        (
            Portion(BucketKind.SUBSCRIPTION, "subscription", 300_000_000),
            Portion(BucketKind.GRANTS, "gr_1", 500_000_000),
            Portion(BucketKind.CREDITS, "credits", 200_000_000),
        )
    )
    five = WindowState("5h", "5-hour", Unit.USD, 5 * USD, 0, 5 * USD, NOW + 3600)
    text = explain_payment(paid, [five], {"gr_1": "welcome credit"})
    assert text.startswith(
        "Paid $1.00: $0.30 from the 5-hour window ($5.00 of $5.00 used, resets 2026-11-25 13:00 UTC), "
        "then $0.50 from grant gr_1 (welcome credit), then $0.20 from purchased credits; "
        "the subscription had only $0.30 of room for it"
    )
    assert explain_payment(Allocation(()), [five], {}) == "Nothing was charged."
