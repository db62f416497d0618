"""price(Usage, Rates) → exact Decimal USD, one line per token class.

Rules (documented in docs/pricing.md):

* Long context: when total input tokens (uncached + cache read + cache write) are strictly greater
  than ``long_context.threshold_input_tokens``, every class uses the long-context rate; a class the
  long-context table does not list keeps its base rate.
* A class without its own rate falls back: ``input_audio``, ``cache_read`` and every
  ``cache_write_<ttl>`` to ``input``; ``output_audio`` to ``output``. Reasoning tokens are output.
* ``batch_multiplier`` scales every token charge; the web-search fee is per request and not scaled.
* No rounding happens here: the result is exact. `fairmeter.money` rounds once per call.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from fairmeter.pricing.rates import Rates
from fairmeter.record import record
from fairmeter.usage.model import Usage

MILLION = Decimal(1_000_000)
THOUSAND = Decimal(1_000)


@record
class PriceLine:
    """One token class of one call: quantity × rate = cost (exact)."""

    token_class: str
    quantity: int
    rate: Decimal  # USD per 1M tokens, or per 1k requests for web_search
    cost: Decimal


@record
class Price:
    """The exact price of a call's usage."""

    lines: tuple[PriceLine, ...]
    total: Decimal
    long_context: bool

    def breakdown(self) -> dict[str, Decimal]:
        """Cost per token class (classes with zero quantity are left out)."""
        return {line.token_class: line.cost for line in self.lines}


def effective_table(rates: Rates, input_tokens: int) -> tuple[Mapping[str, Decimal], bool]:
    """The rate table in force for a call with this many total input tokens."""
    lc = rates.long_context
    if lc is not None and input_tokens > lc.threshold_input_tokens:
        merged = dict(rates.per_mtok)
        merged.update(lc.per_mtok)
        return merged, True
    return rates.per_mtok, False


def rate_for(table: Mapping[str, Decimal], token_class: str) -> Decimal:
    """The rate of one token class, with the documented fallbacks."""
    if token_class in table:
        return table[token_class]
    if token_class.startswith("output"):
        return table["output"]
    return table["input"]


def price_usage(usage: Usage, rates: Rates) -> Price:
    """Exact price of ``usage`` at ``rates``."""
    table, is_long = effective_table(rates, usage.input_tokens)
    quantities: list[tuple[str, int]] = [
        ("input", usage.uncached_input_tokens - usage.input_audio_tokens),
        ("input_audio", usage.input_audio_tokens),
        ("cache_read", usage.cache_read_tokens),
        ("cache_write_5m", usage.cache_write_5m_tokens),
        ("cache_write_1h", usage.cache_write_1h_tokens),
        *((f"cache_write_{ttl}", n) for ttl, n in usage.cache_write_other),
        ("output", usage.output_tokens - usage.output_audio_tokens),
        ("output_audio", usage.output_audio_tokens),
    ]
    lines: list[PriceLine] = []
    total = Decimal(0)
    for token_class, qty in quantities:
        if qty <= 0:
            continue
        rate = rate_for(table, token_class)
        cost = Decimal(qty) * rate * rates.batch_multiplier / MILLION
        lines.append(PriceLine(token_class, qty, rate, cost))
        total += cost
    if usage.web_search_requests > 0:
        fee = Decimal(usage.web_search_requests) * rates.web_search_per_1k / THOUSAND
        lines.append(PriceLine("web_search", usage.web_search_requests, rates.web_search_per_1k, fee))
        total += fee
    return Price(tuple(lines), total, is_long)
