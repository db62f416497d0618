"""Money as text: the nano-USD strings every record and sentence uses are exact."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from fairmeter.money import NANO_PER_USD, decimal_str, from_nano, usd_str, usd_text

amounts = st.integers(min_value=-(10**18), max_value=10**18)


@given(amounts)
def test_usd_str_is_the_exact_decimal_without_trailing_zeros(nano: int) -> None:
    text = usd_str(nano)
    assert Decimal(text) * NANO_PER_USD == nano  # exact, both ways
    assert text == decimal_str(from_nano(nano))  # the same text as the Decimal route
    assert "e" not in text.lower() and not (text.endswith("0") and "." in text)


@given(amounts)
def test_usd_text_shows_cents_at_least_and_every_significant_digit(nano: int) -> None:
    text = usd_text(nano)
    whole, frac = text[1:].split(".")
    assert text.startswith("$") and len(frac) >= 2
    assert Decimal(f"{whole}.{frac}") * NANO_PER_USD == nano


def test_examples() -> None:
    assert [usd_str(n) for n in (0, 1, 46_650, 10**9, 5 * 10**8, -(10**9))] == [
        "0", "0.000000001", "0.00004665", "1", "0.5", "-1",
    ]  # fmt: skip
    assert [usd_text(n) for n in (0, 46_650, 50 * 10**9, 420_000_000)] == ["$0.00", "$0.00004665", "$50.00", "$0.42"]
