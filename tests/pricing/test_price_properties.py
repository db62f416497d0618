"""Pricing properties: more tokens never cost less; the worst case W bounds every usage it covers."""

from __future__ import annotations

import itertools
from dataclasses import replace
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st
from tests.pricing.strategies import rates_strategy

from fairmeter.pricing.price import price_usage
from fairmeter.pricing.rates import Rates, rates_from_mapping
from fairmeter.pricing.worst import RequestBound, worst_case
from fairmeter.usage.model import Usage

small = st.integers(0, 300_000)


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    uncached = draw(small)
    output = draw(small)
    other = draw(st.lists(st.tuples(st.sampled_from(["30m", "12h"]), small), max_size=2, unique_by=lambda t: t[0]))
    return Usage(
        uncached_input_tokens=uncached,
        cache_read_tokens=draw(small),
        cache_write_5m_tokens=draw(small),
        cache_write_1h_tokens=draw(small),
        cache_write_other=tuple(other),
        input_audio_tokens=draw(st.integers(0, uncached)),
        output_tokens=output,
        reasoning_tokens=draw(st.integers(0, output)),
        output_audio_tokens=draw(st.integers(0, output)),
        web_search_requests=draw(st.integers(0, 50)),
    )


def grow(usage: Usage, what: str, k: int) -> Usage:
    """``usage`` with ``k`` more tokens of one kind (audio and reasoning grow their totals too)."""
    if what == "input_audio_tokens":
        return replace(
            usage,
            input_audio_tokens=usage.input_audio_tokens + k,
            uncached_input_tokens=usage.uncached_input_tokens + k,
        )
    if what in ("reasoning_tokens", "output_audio_tokens"):
        return replace(usage, output_tokens=usage.output_tokens + k, **{what: getattr(usage, what) + k})
    if what.startswith("ttl:"):
        ttl = what[4:]
        other = dict(usage.cache_write_other)
        other[ttl] = other.get(ttl, 0) + k
        return replace(usage, cache_write_other=tuple(other.items()))
    return replace(usage, **{what: getattr(usage, what) + k})


KINDS = [
    "uncached_input_tokens", "cache_read_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens", "ttl:30m",
    "ttl:12h", "input_audio_tokens", "output_tokens", "reasoning_tokens", "output_audio_tokens", "web_search_requests",
]  # fmt: skip


@given(
    usage=usages(),
    rates=rates_strategy(long_at_least_base=True),
    what=st.sampled_from(KINDS),
    k=st.integers(1, 300_000),
)
def test_price_never_decreases_when_a_count_grows(usage: Usage, rates: Rates, what: str, k: int) -> None:
    before = price_usage(usage, rates).total
    after = price_usage(grow(usage, what, k), rates).total
    assert after >= before


def test_crossing_the_threshold_switches_every_class() -> None:
    rates = rates_from_mapping(
        {
            "input": "1",
            "output": "2",
            "cache_read": "0.1",
            "long_context": {"threshold_input_tokens": 100, "input": "3", "output": "4", "cache_read": "0.2"},
        }
    )
    at = Usage(uncached_input_tokens=50, cache_read_tokens=50, output_tokens=10)
    over = replace(at, uncached_input_tokens=51)
    assert not price_usage(at, rates).long_context
    assert price_usage(at, rates).total == Decimal("0.000075")  # 50*1 + 50*0.1 + 10*2 = 75
    assert price_usage(over, rates).long_context
    assert price_usage(over, rates).total == Decimal("0.000203")  # 51*3 + 50*0.2 + 10*4 = 203


@st.composite
def usage_within(draw: st.DrawFn, bound: RequestBound) -> Usage:
    total = draw(st.integers(0, bound.max_input_tokens))
    parts = sorted(draw(st.lists(st.integers(0, total), min_size=5, max_size=5)))
    cuts = [0, *parts, total]
    sizes = [b - a for a, b in itertools.pairwise(cuts)]
    uncached, read, w5, w1, w30, w12 = sizes
    output = draw(st.integers(0, bound.max_output_tokens))
    return Usage(
        uncached_input_tokens=uncached,
        cache_read_tokens=read,
        cache_write_5m_tokens=w5,
        cache_write_1h_tokens=w1,
        cache_write_other=(("30m", w30), ("12h", w12)),
        input_audio_tokens=draw(st.integers(0, uncached)),
        output_tokens=output,
        reasoning_tokens=draw(st.integers(0, output)),
        output_audio_tokens=draw(st.integers(0, output)),
        web_search_requests=draw(st.integers(0, bound.max_web_searches)),
    )


bounds = st.builds(
    RequestBound,
    max_input_tokens=st.integers(0, 2_000_000),
    max_output_tokens=st.integers(0, 200_000),
    max_web_searches=st.integers(0, 20),
)


@given(data=st.data(), bound=bounds, rates=rates_strategy(long_at_least_base=False))
def test_worst_case_bounds_every_covered_usage(data: st.DataObject, bound: RequestBound, rates: Rates) -> None:
    usage = data.draw(usage_within(bound))
    assert worst_case(bound, rates) >= price_usage(usage, rates).total
