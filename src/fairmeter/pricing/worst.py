"""The worst case W: a cost the real cost of a call can never exceed.

Input tokens are bounded by the request (UTF-8 bytes of its text plus fixed overheads, computed by
the provider's request module); output tokens by ``n`` × the output limit. W prices every input
token at the most expensive input-side rate that could apply (cache writes included, and the
long-context table when the input bound exceeds its threshold), every output token at the most
expensive output-side rate, and adds each server tool's maximum uses × its fee.
"""

from __future__ import annotations

from decimal import Decimal

from fairmeter.pricing.price import MILLION, THOUSAND
from fairmeter.pricing.rates import Rates
from fairmeter.usage.model import RequestBound

__all__ = ["RequestBound", "worst_case"]


def worst_case(bound: RequestBound, rates: Rates) -> Decimal:
    """Exact worst-case cost in USD of a request with this bound."""
    base_in, base_out, long_in, long_out = rates.peaks
    lc = rates.long_context
    # The actual input may land on either side of a long-context threshold: the peaks cover both tables.
    if lc is not None and bound.max_input_tokens > lc.threshold_input_tokens:
        in_rate, out_rate = long_in, long_out
    else:
        in_rate, out_rate = base_in, base_out
    tokens = Decimal(bound.max_input_tokens) * in_rate + Decimal(bound.max_output_tokens) * out_rate
    fees = Decimal(bound.max_web_searches) * rates.web_search_per_1k / THOUSAND
    return tokens * rates.batch_multiplier / MILLION + fees
