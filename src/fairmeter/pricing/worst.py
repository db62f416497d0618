"""The worst case W: a cost the real cost of a call can never exceed.

Input tokens are bounded by the request (UTF-8 bytes of its text plus fixed overheads, computed by
the provider's request module); output tokens by ``n`` × the output limit. W prices every input
token at the most expensive input-side rate that could apply (cache writes included, and the
long-context table when the input bound exceeds its threshold), every output token at the most
expensive output-side rate, and adds each server tool's maximum uses × its fee.
"""

from __future__ import annotations

from decimal import Decimal

from fairmeter.pricing.price import MILLION, THOUSAND, effective_table, rate_for
from fairmeter.pricing.rates import Rates
from fairmeter.usage.model import RequestBound

__all__ = ["RequestBound", "worst_case"]


def _input_classes(table_keys: set[str]) -> list[str]:
    ttl_keys = sorted(k for k in table_keys if k.startswith("cache_write_"))
    return ["input", "input_audio", "cache_read", "cache_write_5m", "cache_write_1h", *ttl_keys]


def worst_case(bound: RequestBound, rates: Rates) -> Decimal:
    """Exact worst-case cost in USD of a request with this bound."""
    # The actual input may land on either side of a long-context threshold: take both tables.
    tables = [rates.per_mtok, effective_table(rates, bound.max_input_tokens)[0]]
    in_rate = max(rate_for(t, c) for t in tables for c in _input_classes(set(t)))
    out_rate = max(rate_for(t, c) for t in tables for c in ("output", "output_audio"))
    tokens = Decimal(bound.max_input_tokens) * in_rate + Decimal(bound.max_output_tokens) * out_rate
    fees = Decimal(bound.max_web_searches) * rates.web_search_per_1k / THOUSAND
    return tokens * rates.batch_multiplier / MILLION + fees
