"""billed_usage: the estimate method, and that an estimate never exceeds the bound or the hold."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st
from tests.pricing.strategies import rates_strategy

from fairmeter.pricing.estimate import billed_usage
from fairmeter.pricing.price import price_usage
from fairmeter.pricing.rates import Rates, rates_from_mapping
from fairmeter.pricing.worst import RequestBound, worst_case
from fairmeter.usage.model import Usage, UsageReport, UsageStatus

BOUND = RequestBound(max_input_tokens=1000, max_output_tokens=100, max_web_searches=0, prompt_text_bytes=2001)


def report(status: UsageStatus, usage: Usage | None = None, size: int = 0, chunks: int = 0) -> UsageReport:
    return UsageReport(status, usage, delivered_text_bytes=size, delivered_chunks=chunks)


def test_complete_is_taken_as_reported_even_above_the_bound() -> None:
    usage = Usage(uncached_input_tokens=5000, output_tokens=900)
    assert billed_usage(report(UsageStatus.COMPLETE, usage), BOUND) == (usage, False)


def test_error_is_free() -> None:
    assert billed_usage(report(UsageStatus.ERROR, None, 400, 9), BOUND) == (Usage(), False)


def test_unknown_estimates_from_prompt_and_delivered_text() -> None:
    # ceil(2001 / 4) = 501 input; max(3 chunks, ceil(41 / 4) = 11) = 11 output
    assert billed_usage(report(UsageStatus.UNKNOWN, None, 41, 3), BOUND) == (
        Usage(uncached_input_tokens=501, output_tokens=11),
        True,
    )
    # many tiny chunks: one token each at least
    assert billed_usage(report(UsageStatus.UNKNOWN, None, 20, 30), BOUND)[0].output_tokens == 30


def test_unknown_is_capped_by_the_bound() -> None:
    bound = RequestBound(max_input_tokens=300, max_output_tokens=7, prompt_text_bytes=10_000)
    usage, estimated = billed_usage(report(UsageStatus.UNKNOWN, None, 4000, 50), bound)
    assert (usage, estimated) == (Usage(uncached_input_tokens=300, output_tokens=7), True)


def test_partial_raises_output_but_never_lowers_it() -> None:
    reported = Usage(uncached_input_tokens=200, cache_read_tokens=50, output_tokens=1)
    usage, estimated = billed_usage(report(UsageStatus.PARTIAL, reported, 40, 4), BOUND)
    assert estimated and usage == Usage(uncached_input_tokens=200, cache_read_tokens=50, output_tokens=10)
    high = Usage(uncached_input_tokens=200, output_tokens=80)
    assert billed_usage(report(UsageStatus.PARTIAL, high, 40, 4), BOUND) == (high, True)
    # the estimate is capped at the bound, the report is not lowered to it
    above = Usage(uncached_input_tokens=200, output_tokens=150)
    assert billed_usage(report(UsageStatus.PARTIAL, above, 4000, 4), BOUND) == (above, True)
    capped = billed_usage(report(UsageStatus.PARTIAL, reported, 4000, 4), BOUND)[0]
    assert capped.output_tokens == 100


def test_estimate_priced_example() -> None:
    rates = rates_from_mapping({"input": "2.00", "output": "8.00"})
    usage, _ = billed_usage(report(UsageStatus.UNKNOWN, None, 41, 3), BOUND)
    assert price_usage(usage, rates).total == Decimal("0.001090")  # 501*2 + 11*8 = 1090 per 1e6


bounds = st.builds(
    RequestBound,
    max_input_tokens=st.integers(0, 3_000_000),
    max_output_tokens=st.integers(0, 200_000),
    max_web_searches=st.integers(0, 20),
    prompt_text_bytes=st.integers(0, 20_000_000),
)


@st.composite
def reports_within(draw: st.DrawFn, bound: RequestBound) -> UsageReport:
    status = draw(st.sampled_from(list(UsageStatus)))
    size = draw(st.integers(0, 10_000_000))
    chunks = draw(st.integers(0, 1_000_000))
    usage = None
    if status in (UsageStatus.COMPLETE, UsageStatus.PARTIAL):
        total = draw(st.integers(0, bound.max_input_tokens))
        read = draw(st.integers(0, total))
        w5 = draw(st.integers(0, total - read))
        w1 = draw(st.integers(0, total - read - w5))
        other = draw(st.integers(0, total - read - w5 - w1))
        uncached = total - read - w5 - w1 - other
        output = draw(st.integers(0, bound.max_output_tokens))
        usage = Usage(
            uncached_input_tokens=uncached,
            cache_read_tokens=read,
            cache_write_5m_tokens=w5,
            cache_write_1h_tokens=w1,
            cache_write_other=(("30m", other),) if other else (),
            input_audio_tokens=draw(st.integers(0, uncached)),
            output_tokens=output,
            output_audio_tokens=draw(st.integers(0, output)),
            web_search_requests=draw(st.integers(0, bound.max_web_searches)),
        )
    return UsageReport(status, usage, size, chunks)


@given(data=st.data(), bound=bounds, rates=rates_strategy(long_at_least_base=False))
def test_billed_usage_stays_within_bound_and_hold(data: st.DataObject, bound: RequestBound, rates: Rates) -> None:
    rep = data.draw(reports_within(bound))
    usage, estimated = billed_usage(rep, bound)
    assert usage.input_tokens <= bound.max_input_tokens
    assert usage.output_tokens <= bound.max_output_tokens
    assert usage.web_search_requests <= bound.max_web_searches
    assert estimated == (rep.status in (UsageStatus.PARTIAL, UsageStatus.UNKNOWN))
    if rep.usage is not None and rep.status is UsageStatus.PARTIAL:
        assert usage.output_tokens >= rep.usage.output_tokens
    assert price_usage(usage, rates).total <= worst_case(bound, rates)
