"""Plans from their JSON/TOML mapping: round trips, and a clear sentence for every mistake."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fairmeter.ledger.funding import BucketKind
from fairmeter.ledger.plans import Plan, Switches, plan_from_mapping, plan_to_mapping
from fairmeter.ledger.windows import Period, Unit, WindowKind, WindowSpec

PRO: dict[str, Any] = {
    "name": "pro",
    "windows": [
        {"name": "5h", "kind": "block", "hours": 5, "limit_usd": "5.00"},
        {"name": "weekly", "kind": "weekly", "anchor": "monday 09:00", "limit_usd": "50"},
    ],
    "spill_to_credits": False,
    "spill_cap_usd": "20",
}


def test_a_plan_reads_as_written() -> None:
    plan = plan_from_mapping(PRO)
    assert plan.windows == (
        WindowSpec("5h", WindowKind.BLOCK, 5_000_000_000, Unit.USD, length_s=18000),
        WindowSpec("weekly", WindowKind.WEEKLY, 50_000_000_000, Unit.USD, anchor_weekday=0, anchor_s=32400),
    )
    assert plan.order == (BucketKind.SUBSCRIPTION, BucketKind.GRANTS, BucketKind.CREDITS, BucketKind.OVERAGE)
    assert plan.switches == Switches(spill_to_credits=False, spill_cap=20_000_000_000)
    assert plan.grant_days == 90


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "Pro Plan"}, "name must be 1-64 characters"),
        ({"colour": "red"}, "unknown plan field(s) ['colour']"),
        ({"order": ["credits", "credits"]}, "order: a bucket is listed twice"),
        ({"order": ["wallet"]}, "order: 'wallet' is not a valid BucketKind"),
        ({"spill_cap_usd": "-1"}, "spill_cap_usd must be a non-negative dollar amount"),
        ({"spill_cap_usd": 1.5}, "spill_cap_usd must be a dollar amount written as a string"),
        ({"spill_period": "fortnight"}, "spill_period must be one of day, week, month, total"),
        ({"overage_enabled": "yes"}, "overage_enabled must be true or false"),
        ({"grant_days": 0}, "grant_days must be a whole number from 1 to 3650"),
        (
            {"windows": [{"name": "w", "kind": "weekly", "anchor": "someday 9", "limit_usd": "1"}]},
            "windows[0].anchor must be a weekday",
        ),
        (
            {"windows": [{"name": "w", "kind": "block", "limit_usd": "1", "limit_tokens": 5}]},
            "windows[0] needs exactly one of",
        ),
        ({"windows": [{"name": "w", "kind": "monthly", "limit_usd": "1"}]}, "windows[0].kind must be"),
        ({"windows": [{"name": "w", "kind": "weekly", "hours": 5, "limit_usd": "1"}]}, "it takes an anchor, not hours"),
        (
            {"windows": [{"name": "w", "kind": "block", "limit_usd": "1"}] * 2},
            "two windows of a plan have the same name",
        ),
    ],
)
def test_every_mistake_says_what_is_wrong(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        plan_from_mapping({**PRO, **change})
    assert message in str(err.value)


windows = st.lists(
    st.one_of(
        st.builds(
            WindowSpec,
            name=st.sampled_from(["a", "b", "c"]),
            kind=st.just(WindowKind.BLOCK),
            limit=st.integers(0, 10**13),
            unit=st.sampled_from(list(Unit)),
            length_s=st.integers(1, 744).map(lambda h: h * 3600),
        ),
        st.builds(
            WindowSpec,
            name=st.sampled_from(["d", "e"]),
            kind=st.just(WindowKind.WEEKLY),
            limit=st.integers(0, 10**13),
            unit=st.sampled_from(list(Unit)),
            anchor_weekday=st.integers(0, 6),
            anchor_s=st.integers(0, 1439).map(lambda m: m * 60),
        ),
    ),
    max_size=3,
    unique_by=lambda w: w.name,
)
switches = st.builds(
    Switches,
    spill_to_credits=st.booleans(),
    spill_cap=st.none() | st.integers(0, 10**13),
    spill_period=st.sampled_from(list(Period)),
    overage_enabled=st.booleans(),
    overage_cap=st.none() | st.integers(0, 10**13),
    overage_period=st.sampled_from(list(Period)),
)


@given(
    windows=windows,
    order=st.permutations(list(BucketKind)).flatmap(lambda p: st.integers(1, 4).map(lambda n: tuple(p[:n]))),
    sw=switches,
    days=st.integers(1, 3650),
)
def test_plans_round_trip(windows: list[WindowSpec], order: tuple[BucketKind, ...], sw: Switches, days: int) -> None:
    plan = Plan("p", tuple(windows), order, sw, days)
    assert plan_from_mapping(plan_to_mapping(plan)) == plan
