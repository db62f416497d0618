"""`overage_only`: the plans whose funding leg a store may place and settle without reading anything or calling
`allocate`, because `allocate` would put the whole hold on overage and `draw` would take the cost from it."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from fairmeter.ledger.funding import (
    DEFAULT_ORDER,
    Allocation,
    BucketKind,
    Funding,
    Grant,
    Portion,
    Size,
    WindowUse,
    allocate,
    draw,
)
from fairmeter.ledger.plans import Plan, Switches, overage_only
from fairmeter.ledger.windows import WindowKind, WindowSpec

USD = 1_000_000_000
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC).timestamp()
FIVE_H = WindowSpec("5h", WindowKind.BLOCK, limit=5 * USD)

orders = st.permutations(DEFAULT_ORDER).flatmap(lambda o: st.integers(1, 4).map(lambda n: tuple(o[:n])))
plans = st.builds(Plan, name=st.just("p"), windows=st.sampled_from([(), (FIVE_H,)]), order=orders)
switches = st.builds(
    Switches,
    spill_to_credits=st.booleans(),
    spill_cap=st.none() | st.integers(0, 10 * USD),
    overage_enabled=st.booleans(),
    overage_cap=st.none() | st.integers(0, 10 * USD),
)
amounts = st.integers(1, 20 * USD)


@settings(max_examples=500)  # about one example in eight is an overage-only plan
@given(plans, switches, amounts, st.integers(0, 30 * USD), st.integers(0, 5 * USD), st.integers(0, 5 * USD))
def test_an_overage_only_plan_holds_all_of_w_on_overage_and_draws_the_cost_from_it(
    plan: Plan, sw: Switches, w: int, cost: int, credits: int, window_used: int
) -> None:
    """Whatever the other buckets hold (credits, a live grant, a window with room), and whatever the cost."""
    funding = Funding(
        order=plan.order,
        windows=tuple(WindowUse(s, NOW - 60, False, window_used, 0) for s in plan.windows),
        grants=(Grant("g1", 2 * USD, 0, 0, 0, NOW - 100, NOW + 86_400, NOW - 100),),
        credits_room=credits,
        spill_to_credits=sw.spill_to_credits,
        spill_room=sw.spill_cap,
        overage_enabled=sw.overage_enabled,
        overage_room=sw.overage_cap,
    )
    held = allocate(funding, Size(w), NOW)
    on_overage = Allocation((Portion(BucketKind.OVERAGE, "overage", w),))
    if not overage_only(plan, sw):
        return
    assert held == on_overage
    paid = min(cost, w)
    expected = Allocation((Portion(BucketKind.OVERAGE, "overage", paid),) if paid else ())
    d = draw(on_overage, Size(cost), lambda gid: True)
    assert (d.paid, d.released, d.unplaced) == (expected, w - paid, cost - paid)
    assert draw(on_overage, Size(0), lambda gid: True).paid == Allocation(())  # a void


def test_any_bucket_that_could_take_a_share_or_a_cap_to_read_makes_it_not_overage_only() -> None:
    payg, on = Plan("payg", order=(BucketKind.OVERAGE,)), Switches(overage_enabled=True)
    assert overage_only(payg, on)
    assert overage_only(Plan("p", order=DEFAULT_ORDER), on)  # no windows, spill off: the rest are skipped
    assert overage_only(
        Plan("p", order=(BucketKind.OVERAGE, BucketKind.CREDITS)), Switches(True, None, overage_enabled=True)
    )
    assert not overage_only(payg, Switches(overage_enabled=False))
    assert not overage_only(payg, Switches(overage_enabled=True, overage_cap=USD))  # the cap's counter is read
    assert not overage_only(Plan("p", windows=(FIVE_H,), order=DEFAULT_ORDER), on)
    assert not overage_only(Plan("p", order=DEFAULT_ORDER), Switches(spill_to_credits=True, overage_enabled=True))
    assert not overage_only(Plan("p", order=(BucketKind.CREDITS,)), on)  # no overage bucket at all
