"""Pure pricing: `Usage` × `Rates` → exact `Decimal` USD, per token class."""

from fairmeter.pricing.price import Price, PriceLine, price_usage
from fairmeter.pricing.rates import LongContext, Rates

__all__ = ["LongContext", "Price", "PriceLine", "Rates", "price_usage"]
