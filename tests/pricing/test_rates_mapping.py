"""rates_from_mapping: typos in a price table are errors, never a silently wrong rate."""

from __future__ import annotations

import pytest

from fairmeter.pricing.rates import rates_from_mapping


def test_unknown_long_context_key_is_an_error() -> None:
    with pytest.raises(ValueError, match="ouptut"):
        rates_from_mapping({"input": "1", "output": "2", "long_context": {"threshold_input_tokens": 5, "ouptut": "3"}})


def test_long_context_accepts_every_rate_key_and_any_cache_ttl() -> None:
    lc = {"threshold_input_tokens": 5, "input": "2", "output": "4", "cache_read": "0.2", "cache_write_30m": "2.5"}
    rates = rates_from_mapping({"input": "1", "output": "2", "long_context": lc})
    assert rates.long_context is not None
    assert set(rates.long_context.per_mtok) == {"input", "output", "cache_read", "cache_write_30m"}
    assert rates.to_json()["long_context"]["threshold_input_tokens"] == 5


def test_unknown_top_level_key_and_float_are_errors() -> None:
    with pytest.raises(ValueError, match="inptu"):
        rates_from_mapping({"input": "1", "output": "2", "inptu": "1"})
    with pytest.raises(ValueError, match="float"):
        rates_from_mapping({"input": 1.5, "output": "2"})
