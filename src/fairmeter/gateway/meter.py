"""Pricing a call, before (the hold W) and after (cost and billed amount), in one place."""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal

import orjson

from fairmeter.catalog import Catalog
from fairmeter.config import Config
from fairmeter.errors import ModelNotFound, UnboundedRequest
from fairmeter.money import Nano, decimal_str, hold_nano, to_nano, usd_str
from fairmeter.pricing.estimate import billed_usage
from fairmeter.pricing.price import MILLION, effective_table, price_usage
from fairmeter.pricing.rates import Rates
from fairmeter.pricing.worst import RequestBound, worst_case
from fairmeter.record import record
from fairmeter.usage.model import Usage, UsageReport, UsageStatus
from fairmeter.usage.request import ParsedRequest

# The input bound used for estimates of a request whose input cannot be seen (its hold is max_request_usd).
UNBOUNDED_INPUT_TOKENS = 10_000_000


@record
class Quote:
    """The hold for one call: W in nano-USD and what it was computed from."""

    rates: Rates
    bound: RequestBound
    reserved: Nano
    estimate: Nano  # what a forwarded call is settled at if its gateway dies (prompt estimate)
    prices_json: str
    provider: str = ""
    model: str = ""
    tier: str | None = None  # the service tier asked for (None: standard)

    @property
    def tokens(self) -> int:
        """Worst-case tokens of every class (for subscription windows counted in tokens)."""
        return self.bound.max_input_tokens + self.bound.max_output_tokens


@record
class Bill:
    """What a finished call cost (exact) and what the ledger settles (rounded once)."""

    cost_usd: str | None
    billed: Nano
    estimated: bool
    usage_json: str | None
    breakdown_json: str
    prices_json: str | None = None  # set when the call was served in another tier than it was held for
    price_source: str | None = None
    tokens: int = 0  # billed tokens of every class


class Meter:
    """Turns parsed requests into holds and usage reports into bills."""

    def __init__(self, config: Config, catalog: Catalog) -> None:
        self.config = config
        self.catalog = catalog
        self._prices_json: dict[int, tuple[Rates, str]] = {}  # keeps each Rates alive, so ids stay unique

    def quote(self, provider: str, parsed: ParsedRequest) -> Quote:
        """Price the worst case W of a request; refuse unknown models and unbounded input."""
        tier = _tier(parsed.service_tier)
        rates = self.catalog.lookup(provider, parsed.model, tier)
        if rates is None:
            raise ModelNotFound(
                f"The model '{parsed.model}' has no known price for {provider}, so its cost could not be capped; "
                f'add [prices."{parsed.model}"] to the fairmeter config to allow it.',
                param="model",
            )
        model_max = rates.max_output_tokens or rates.context_window
        if model_max is None and parsed.output_limit is None:
            raise UnboundedRequest(
                f"The request sets no output token limit and the maximum output of '{parsed.model}' is unknown; "
                "set max_tokens (or max_output_tokens) or configure max_output_tokens for the model.",
                param="max_tokens",
            )
        bound = parsed.bound(model_max or 0)
        if parsed.unbounded_reason is not None:
            if self.config.max_request is None:
                raise UnboundedRequest(
                    f"The cost of this request cannot be bounded before it runs: {parsed.unbounded_reason}. "
                    "Set max_request_usd in the fairmeter config to allow such requests.",
                )
            reserved = self.config.max_request
            bound = RequestBound(UNBOUNDED_INPUT_TOKENS, bound.max_output_tokens, 0, bound.prompt_text_bytes)
        else:
            reserved = hold_nano(worst_case(bound, rates))
        prompt_tokens = min(bound.max_input_tokens, -(-bound.prompt_text_bytes // 4))
        table, _ = effective_table(rates, prompt_tokens)
        estimate = min(reserved, to_nano(Decimal(prompt_tokens) * table["input"] * rates.batch_multiplier / MILLION))
        return Quote(rates, bound, reserved, estimate, self._rates_json(rates), provider, parsed.model, tier)

    def bill(self, quote: Quote, report: UsageReport) -> Bill:
        """Exact cost of the reported usage, and the billed amount (with an estimate when cut)."""
        if report.status is UsageStatus.ERROR:
            return Bill("0", 0, False, _ZERO_USAGE_JSON, "{}")
        rates, prices_json, source = quote.rates, None, None
        served = _served_tier(report)
        if served != quote.tier and quote.model:  # bill at the rates of the tier the provider says it used
            other = self.catalog.lookup(quote.provider, quote.model, served)
            if other is not None and other is not rates:
                rates, prices_json, source = other, self._rates_json(other), other.source
        cost = None if report.usage is None else price_usage(report.usage, rates)
        usage, estimated = billed_usage(report, quote.bound)
        billed_price = cost if cost is not None and usage is report.usage else price_usage(usage, rates)
        breakdown = {line.token_class: decimal_str(line.cost) for line in billed_price.lines}
        return Bill(
            cost_usd=None if cost is None else decimal_str(cost.total),
            billed=to_nano(billed_price.total),
            estimated=estimated,
            usage_json=None if report.usage is None else _usage_json(report.usage),
            breakdown_json=orjson.dumps(breakdown).decode(),
            prices_json=prices_json,
            price_source=source,
            tokens=usage.input_tokens + usage.output_tokens,
        )

    def max_output_fitting(self, quote: Quote, parsed: ParsedRequest, room: Nano) -> int | None:
        """The largest output limit (``max_tokens``) whose hold fits in ``room``, when a smaller one would.

        None when the hold is not set by the output limit (a configured per-request maximum) or
        when even one output token would not fit.
        """
        if parsed.unbounded_reason is not None or quote.bound.max_output_tokens <= 1:
            return None
        model_max = quote.rates.max_output_tokens or quote.rates.context_window or 0
        current = parsed.output_limit if parsed.output_limit is not None else model_max

        def fits(limit: int) -> bool:
            bound = replace(parsed, output_limit=limit).bound(model_max)
            return hold_nano(worst_case(bound, quote.rates)) <= room

        low, high = 0, current - 1  # invariant: fits(low) (or low == 0), the answer is in [low, high]
        while low < high:
            mid = (low + high + 1) // 2
            if fits(mid):
                low = mid
            else:
                high = mid - 1
        return low if low >= 1 and fits(low) else None

    def _rates_json(self, rates: Rates) -> str:
        cached = self._prices_json.get(id(rates))
        if cached is None:
            cached = (rates, json.dumps(rates.to_json()))
            self._prices_json[id(rates)] = cached
        return cached[1]


_STANDARD_TIERS = frozenset({"auto", "default", "standard"})


def _tier(name: str | None) -> str | None:
    """A service tier with its own prices, or None for the standard one."""
    return None if name is None or name in _STANDARD_TIERS else name


def _served_tier(report: UsageReport) -> str | None:
    """The tier the provider reports it served the call in (readers note non-standard ones)."""
    for note in report.notes:
        if note.startswith("service_tier="):
            return _tier(note.partition("=")[2])
    return None


def _usage_json(u: Usage) -> str:
    return orjson.dumps(
        {
            "input_tokens": u.input_tokens,
            "uncached_input_tokens": u.uncached_input_tokens,
            "cache_read_tokens": u.cache_read_tokens,
            "cache_write_tokens": u.cache_write_tokens,
            "cache_write_5m_tokens": u.cache_write_5m_tokens,
            "cache_write_1h_tokens": u.cache_write_1h_tokens,
            "output_tokens": u.output_tokens,
            "reasoning_tokens": u.reasoning_tokens,
            "web_search_requests": u.web_search_requests,
            "input_audio_tokens": u.input_audio_tokens,
            "output_audio_tokens": u.output_audio_tokens,
        }
    ).decode()


_ZERO_USAGE_JSON = _usage_json(Usage())


def budget_message(cap: Nano, spent: Nano, held: Nano, amount: Nano) -> str:
    """The sentence of a budget refusal, with every number."""
    room = max(0, cap - spent - held)
    return (
        f"This call needs a hold of ${usd_str(amount)} (its worst-case cost), but this key's spend cap is "
        f"${usd_str(cap)}: ${usd_str(spent)} is spent and ${usd_str(held)} is held by calls in flight, "
        f"leaving ${usd_str(room)}. Lower max_tokens or raise the cap."
    )
