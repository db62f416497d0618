"""Hypothesis strategies for rate tables (decimal strings, as in config and cost cases)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from fairmeter.pricing.price import rate_for
from fairmeter.pricing.rates import Rates, rates_from_mapping

OPTIONAL = ("cache_read", "cache_write_5m", "cache_write_1h", "cache_write_30m", "input_audio", "output_audio")
price = st.decimals(min_value=0, max_value=200, places=4, allow_nan=False, allow_infinity=False)


@st.composite
def rates_strategy(draw: st.DrawFn, *, long_at_least_base: bool) -> Rates:
    """Random rates; with ``long_at_least_base`` every long-context rate is ≥ the base rate it replaces."""
    raw: dict[str, Any] = {"input": str(draw(price)), "output": str(draw(price))}
    for key in OPTIONAL:
        if draw(st.booleans()):
            raw[key] = str(draw(price))
    if draw(st.booleans()):
        raw["web_search_per_1k_requests"] = str(draw(price))
    if draw(st.booleans()):
        raw["batch_multiplier"] = str(draw(st.sampled_from([Decimal("0.5"), Decimal(1), Decimal("0.25")])))
    if draw(st.booleans()):
        base = rates_from_mapping(raw).per_mtok
        lc: dict[str, Any] = {"threshold_input_tokens": draw(st.integers(0, 400_000))}
        for key in ("input", "output", *OPTIONAL):
            if draw(st.booleans()):
                extra = draw(price)
                lc[key] = str(rate_for(base, key) + extra if long_at_least_base else extra)
        raw["long_context"] = lc
    return rates_from_mapping(raw)
