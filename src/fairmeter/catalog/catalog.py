"""The pricing catalog: turns `genai-prices` data and config overrides into `Rates`, cached.

A genai-prices lookup costs about 0.2 ms, and loading its data about 0.3 s, so results (hits and
misses) are cached per (provider, model) for the life of the process and, when a cache directory is
configured, in a small JSON file per genai-prices version and UTC day, so a restarted gateway answers
its first call without loading the package at all; the package version is pinned, and each call record
keeps the unit prices it was charged and their source (``genai-prices 0.2.3`` or ``config:FILE``).

Mapping from genai-prices keys: input_mtok → input, output_mtok → output, cache_read_mtok →
cache_read, cache_write_mtok / cache_write_5m_mtok → cache_write_5m, cache_write_1h_mtok →
cache_write_1h, input_audio_mtok / output_audio_mtok → audio, web_searches_kcount → web search
fee per 1k. A tiered price with one tier becomes the long-context table (its threshold is strict,
as in genai-prices). Service tiers (OpenAI flex / priority / fast) use genai-prices' price variants for
that ``service_tier``; a tier it does not list is priced at the standard rates.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any

from fairmeter.catalog.disk import PriceFile
from fairmeter.config import PriceOverride
from fairmeter.pricing.rates import LongContext, Rates

_KEY_MAP = {
    "input_mtok": "input",
    "output_mtok": "output",
    "cache_read_mtok": "cache_read",
    "cache_write_mtok": "cache_write_5m",
    "cache_write_5m_mtok": "cache_write_5m",
    "cache_write_1h_mtok": "cache_write_1h",
    "input_audio_mtok": "input_audio",
    "output_audio_mtok": "output_audio",
}


class Catalog:
    """Looks up `Rates` for (provider, model); ``None`` means the model is unknown (refused)."""

    def __init__(
        self,
        overrides: tuple[PriceOverride, ...] = (),
        use_genai_prices: bool = True,
        cache_dir: Path | None = None,
    ) -> None:
        self._overrides = overrides
        self._use_genai = use_genai_prices
        self._cache: dict[tuple[str, str], Rates | None] = {}
        self._version = version("genai-prices")
        self._source = f"genai-prices {self._version}"
        self._disk = PriceFile(cache_dir, self._version, self._source) if cache_dir is not None else None

    def lookup(self, provider: str, model: str, tier: str | None = None) -> Rates | None:
        """Rates for ``model`` served by ``provider`` in service ``tier`` (None: the standard tier).

        Cached in memory, and on disk when configured. Config overrides price every tier alike.
        """
        key = (provider, model if tier is None else f"{model}@{tier}")
        try:
            return self._cache[key]
        except KeyError:
            pass
        rates = self._from_overrides(provider, model)
        if rates is None and self._use_genai:
            found, rates = self._disk.get(provider, key[1]) if self._disk is not None else (False, None)
            if not found:
                rates = self._from_genai_prices(provider, model, tier)
                if self._disk is not None:
                    self._disk.put(provider, key[1], rates)
        self._cache[key] = rates
        return rates

    def _from_overrides(self, provider: str, model: str) -> Rates | None:
        for o in self._overrides:
            if o.model == model and o.provider in (None, provider):
                return o.rates
        return None

    def _from_genai_prices(self, provider: str, model: str, tier: str | None) -> Rates | None:
        from genai_prices import data_snapshot
        from genai_prices.types import TieredPrices

        try:
            _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
        except LookupError:
            return None
        context = {"service_tier": tier} if tier is not None else None
        prices = info.get_prices(datetime.now(tz=UTC), context)
        base: dict[str, Decimal] = {}
        tier_rates: dict[str, Decimal] = {}
        threshold: int | None = None
        web_search = Decimal(0)
        for key, value in vars(prices).items():
            if value is None or key.startswith("_"):
                continue
            if key == "web_searches_kcount":
                web_search = _base_value(value)
                continue
            ours = _KEY_MAP.get(key)
            if ours is None:
                continue
            if isinstance(value, TieredPrices):
                if len(value.tiers) != 1:
                    return None  # several tiers cannot be priced exactly here: unknown unless configured
                step = value.tiers[0]
                if threshold is not None and threshold != step.start:
                    return None
                threshold = step.start
                base[ours] = value.base
                tier_rates[ours] = step.price
            else:
                base[ours] = value
        if "input" not in base or "output" not in base:
            return None
        long_context = LongContext(threshold, tier_rates) if threshold is not None else None
        return Rates(
            per_mtok=base,
            web_search_per_1k=web_search,
            long_context=long_context,
            context_window=info.context_window,
            source=self._source,
        )


def _base_value(value: Any) -> Decimal:
    base = getattr(value, "base", value)
    return base if isinstance(base, Decimal) else Decimal(str(base))
