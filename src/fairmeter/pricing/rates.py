"""Unit prices for one model, in USD per million tokens, with where they came from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from decimal import Decimal
from typing import Any

from fairmeter.record import record

# Rate keys of `prices_per_mtok`; `cache_write_<ttl>` is accepted for any TTL.
TOKEN_RATE_KEYS = (
    "input",
    "output",
    "cache_read",
    "cache_write_5m",
    "cache_write_1h",
    "input_audio",
    "output_audio",
)
FEE_KEYS = ("web_search_per_1k_requests",)


@record
class LongContext:
    """Rates that replace the base ones when total input tokens exceed the threshold (strictly)."""

    threshold_input_tokens: int
    per_mtok: Mapping[str, Decimal]


@record
class Rates:
    """A model's prices. ``per_mtok`` maps a rate key (see TOKEN_RATE_KEYS) to USD per 1M tokens."""

    per_mtok: Mapping[str, Decimal]
    web_search_per_1k: Decimal = Decimal(0)
    batch_multiplier: Decimal = Decimal(1)
    long_context: LongContext | None = None
    max_output_tokens: int | None = None
    context_window: int | None = None
    source: str = "config"
    extra: Mapping[str, Any] = field(default_factory=dict)
    # The dearest input-side and output-side rates, without and with the long-context table:
    # computed once here because every hold needs them (see `fairmeter.pricing.worst`).
    peaks: tuple[Decimal, Decimal, Decimal, Decimal] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        base_in, base_out = _peak(self.per_mtok)
        long_in, long_out = base_in, base_out
        if self.long_context is not None:
            long_in, long_out = _peak({**self.per_mtok, **self.long_context.per_mtok})
        object.__setattr__(self, "peaks", (base_in, base_out, max(base_in, long_in), max(base_out, long_out)))

    def to_json(self) -> dict[str, Any]:
        """The unit prices as decimal strings, as recorded with each call."""
        out: dict[str, Any] = {k: str(v) for k, v in self.per_mtok.items()}
        if self.web_search_per_1k:
            out["web_search_per_1k_requests"] = str(self.web_search_per_1k)
        if self.batch_multiplier != 1:
            out["batch_multiplier"] = str(self.batch_multiplier)
        if self.long_context is not None:
            lc: dict[str, Any] = {k: str(v) for k, v in self.long_context.per_mtok.items()}
            lc["threshold_input_tokens"] = self.long_context.threshold_input_tokens
            out["long_context"] = lc
        return out


def _peak(table: Mapping[str, Decimal]) -> tuple[Decimal, Decimal]:
    """Dearest input-side and output-side rate of one table, with the documented fallbacks."""
    base_in, base_out = table.get("input", Decimal(0)), table.get("output", Decimal(0))
    inputs = ("input_audio", "cache_read", "cache_write_5m", "cache_write_1h")
    in_rates = [table.get(k, base_in) for k in inputs] + [v for k, v in table.items() if k.startswith("cache_write_")]
    return max([base_in, *in_rates]), max(base_out, table.get("output_audio", base_out))


def _dec(value: Any, key: str) -> Decimal:
    if isinstance(value, (bool, float)):
        raise ValueError(f"price {key!r} must be a decimal string or an integer, not {type(value).__name__}")
    if not isinstance(value, (str, int, Decimal)):
        raise ValueError(f"price {key!r} must be a decimal string, got {type(value).__name__}")
    try:
        d = Decimal(value)
    except ArithmeticError as exc:
        raise ValueError(f"price {key!r} is not a number: {value!r}") from exc
    if not d.is_finite() or d < 0:
        raise ValueError(f"price {key!r} must be a finite non-negative number: {value!r}")
    return d


def _rate_table(raw: Mapping[str, Any], where: str) -> dict[str, Decimal]:
    table: dict[str, Decimal] = {}
    for key, value in raw.items():
        if key in TOKEN_RATE_KEYS or key.startswith("cache_write_"):
            table[key] = _dec(value, f"{where}{key}")
    return table


def rates_from_mapping(raw: Mapping[str, Any], source: str = "config") -> Rates:
    """Build `Rates` from a `prices_per_mtok` mapping (config `[prices."MODEL"]` or a cost case).

    Unknown keys are an error, so a typo never silently prices a class at zero.
    """
    allowed = {*TOKEN_RATE_KEYS, *FEE_KEYS, "batch_multiplier", "long_context", "provider", "max_output_tokens"}
    for key in raw:
        if key not in allowed and not key.startswith("cache_write_"):
            raise ValueError(f"unknown price key {key!r}; allowed: {', '.join(sorted(allowed))}")
    per_mtok = _rate_table(raw, "")
    if "input" not in per_mtok or "output" not in per_mtok:
        raise ValueError("a price table needs at least 'input' and 'output'")
    long_context = None
    if "long_context" in raw:
        lc = raw["long_context"]
        if not isinstance(lc, Mapping) or "threshold_input_tokens" not in lc:
            raise ValueError("long_context needs threshold_input_tokens and rates")
        for key in lc:
            # A typo here would silently keep the base rate above the threshold.
            if key != "threshold_input_tokens" and key not in TOKEN_RATE_KEYS and not key.startswith("cache_write_"):
                raise ValueError(f"unknown long_context price key {key!r}")
        threshold = lc["threshold_input_tokens"]
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise ValueError("long_context.threshold_input_tokens must be a non-negative integer")
        long_context = LongContext(threshold, _rate_table(lc, "long_context."))
    max_out = raw.get("max_output_tokens")
    if max_out is not None and (isinstance(max_out, bool) or not isinstance(max_out, int) or max_out <= 0):
        raise ValueError("max_output_tokens must be a positive integer")
    return Rates(
        per_mtok=per_mtok,
        web_search_per_1k=_dec(raw.get("web_search_per_1k_requests", 0), "web_search_per_1k_requests"),
        batch_multiplier=_dec(raw.get("batch_multiplier", 1), "batch_multiplier"),
        long_context=long_context,
        max_output_tokens=max_out,
        source=source,
    )
