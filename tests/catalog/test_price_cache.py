"""The on-disk price cache: same rates as genai-prices, and a restarted process need not load the package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fairmeter.catalog import Catalog
from fairmeter.pricing.price import price_usage
from fairmeter.usage.model import Usage


def test_rates_from_the_disk_cache_equal_genai_prices(tmp_path: Path) -> None:
    fresh = Catalog(cache_dir=tmp_path)
    live = fresh.lookup("anthropic", "claude-sonnet-4-5")
    assert fresh.lookup("openai", "no-such-model-xyz") is None
    files = list(tmp_path.glob("genai-prices-*.json"))
    assert len(files) == 1
    cached = Catalog(cache_dir=tmp_path).lookup("anthropic", "claude-sonnet-4-5")
    assert live is not None and cached is not None
    assert cached.to_json() == live.to_json() and cached.context_window == live.context_window
    assert cached.source == live.source and cached.peaks == live.peaks
    usage = Usage(uncached_input_tokens=250_000, cache_write_1h_tokens=10, output_tokens=7)  # long context
    assert price_usage(usage, cached).total == price_usage(usage, live).total


def test_a_restarted_process_answers_from_the_cache_without_loading_genai_prices(tmp_path: Path) -> None:
    Catalog(cache_dir=tmp_path).lookup("openai", "gpt-4o-mini")
    code = (
        "import sys; from pathlib import Path; from fairmeter.catalog import Catalog\n"
        f"r = Catalog(cache_dir=Path({str(tmp_path)!r})).lookup('openai', 'gpt-4o-mini')\n"
        "print(r.per_mtok['input'], 'genai_prices' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0.15", "False"]


def test_a_cache_from_another_day_is_ignored(tmp_path: Path) -> None:
    Catalog(cache_dir=tmp_path).lookup("openai", "gpt-4o-mini")
    (path,) = tmp_path.glob("genai-prices-*.json")
    data = json.loads(path.read_text())
    data["models"]["openai|gpt-4o-mini"]["prices"]["input"] = "999"
    data["day"] = "2000-01-01"
    path.write_text(json.dumps(data))
    rates = Catalog(cache_dir=tmp_path).lookup("openai", "gpt-4o-mini")
    assert rates is not None and str(rates.per_mtok["input"]) == "0.15"
