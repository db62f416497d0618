"""W is an upper bound (see test_price_properties) and also a tight one: some usage within the bound costs W."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from fairmeter.pricing.price import price_usage
from fairmeter.pricing.rates import rates_from_mapping
from fairmeter.pricing.worst import worst_case
from fairmeter.usage.model import RequestBound, Usage

rate = st.decimals(min_value=0, max_value=100, places=3, allow_nan=False, allow_infinity=False)


@given(
    inp=rate, out=rate, read=rate, w5=rate, w1=rate, a_in=rate, a_out=rate,
    tokens_in=st.integers(0, 10**6), tokens_out=st.integers(0, 10**6),
)  # fmt: skip
def test_worst_case_is_reached_by_the_dearest_usage(
    inp: Decimal, out: Decimal, read: Decimal, w5: Decimal, w1: Decimal, a_in: Decimal, a_out: Decimal,
    tokens_in: int, tokens_out: int,
) -> None:  # fmt: skip
    rates = rates_from_mapping(
        {"input": str(inp), "output": str(out), "cache_read": str(read), "cache_write_5m": str(w5),
         "cache_write_1h": str(w1), "input_audio": str(a_in), "output_audio": str(a_out)}
    )  # fmt: skip
    w = worst_case(RequestBound(tokens_in, tokens_out), rates)
    by_class = {
        "input": Usage(uncached_input_tokens=tokens_in),
        "cache_read": Usage(cache_read_tokens=tokens_in),
        "cache_write_5m": Usage(cache_write_5m_tokens=tokens_in),
        "cache_write_1h": Usage(cache_write_1h_tokens=tokens_in),
        "input_audio": Usage(uncached_input_tokens=tokens_in, input_audio_tokens=tokens_in),
    }
    outputs = [Usage(output_tokens=tokens_out), Usage(output_tokens=tokens_out, output_audio_tokens=tokens_out)]
    dearest = max(price_usage(u, rates).total for u in by_class.values()) + max(
        price_usage(u, rates).total for u in outputs
    )
    assert w == dearest
