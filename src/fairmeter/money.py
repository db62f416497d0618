"""Money: integer nano-USD in storage, `Decimal` USD while pricing.

One rounding rule, applied once per call (see docs/architecture.md, "Rounding"):

* a settled cost is rounded to the nearest nano-USD, halves away from zero (`ROUND_HALF_UP`);
* a hold (the worst case W) is rounded up (`ROUND_CEILING`), so it stays an upper bound.

Both rules are monotone, so `cost <= W` in Decimal implies `to_nano(cost) <= hold_nano(W)`.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

NANO_PER_USD = 1_000_000_000
_NANO = Decimal(NANO_PER_USD)

Nano = int  # integer nano-USD (1e-9 USD)


def to_nano(usd: Decimal) -> Nano:
    """Round a settled cost in USD to integer nano-USD (half up)."""
    return int((usd * _NANO).to_integral_value(rounding=ROUND_HALF_UP))


def hold_nano(usd: Decimal) -> Nano:
    """Round a worst-case bound in USD up to integer nano-USD."""
    return int((usd * _NANO).to_integral_value(rounding=ROUND_CEILING))


def from_nano(nano: Nano) -> Decimal:
    """Exact USD value of an integer nano-USD amount."""
    return Decimal(nano) / _NANO


def usd_str(nano: Nano) -> str:
    """Decimal string of a nano-USD amount without trailing zeros, e.g. ``"0.0005253"`` (integer arithmetic:
    the same text as ``decimal_str(from_nano(nano))``, at a fraction of the cost)."""
    whole, frac = divmod(abs(nano), NANO_PER_USD)
    sign = "-" if nano < 0 else ""
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:09d}".rstrip("0")


def usd_text(nano: Nano) -> str:
    """For people: ``$0.42``, ``$50.00``, ``$0.000117`` (cents at least, every significant digit beyond)."""
    whole, _, frac = usd_str(nano).partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"


def decimal_str(value: Decimal) -> str:
    """Plain (non-scientific) decimal string without trailing zeros."""
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    return text


def parse_usd(text: str | int | Decimal) -> Decimal:
    """Parse a USD amount given as a string, int or Decimal (never a float)."""
    if isinstance(text, bool):
        raise ValueError("a money amount cannot be a boolean")
    value = Decimal(text) if not isinstance(text, Decimal) else text
    if not value.is_finite() or value < 0:
        raise ValueError(f"not a valid non-negative amount: {text!r}")
    return value
