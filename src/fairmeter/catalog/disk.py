"""The on-disk price cache: genai-prices results for the models this gateway has seen.

One JSON file per genai-prices version; its entries are valid for the UTC day they were written on
(prices carry effective dates, so a new day reads them afresh). Writing is best effort and atomic
(write a temporary file, then rename): a cache that cannot be read or written is simply not used.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fairmeter.pricing.rates import Rates, rates_from_mapping


class PriceFile:
    """Cached `Rates` (or a known miss) per (provider, model)."""

    def __init__(self, directory: Path, genai_version: str, source: str) -> None:
        self.path = directory / f"genai-prices-{genai_version}.json"
        self._source = source
        self._day = datetime.now(tz=UTC).date().isoformat()
        self._entries: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._entries is None:
            self._entries = {}
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if isinstance(data, dict) and data.get("day") == self._day and isinstance(data.get("models"), dict):
                    self._entries = data["models"]
        return self._entries

    def get(self, provider: str, model: str) -> tuple[bool, Rates | None]:
        """(found, rates); rates is None for a model genai-prices does not know."""
        entries = self._load()
        key = f"{provider}|{model}"
        if key not in entries:
            return False, None
        entry = entries[key]
        if entry is None:
            return True, None
        try:
            rates = rates_from_mapping(entry["prices"], source=self._source)
            return True, replace(rates, context_window=entry.get("context_window"))
        except (KeyError, TypeError, ValueError):
            return False, None

    def put(self, provider: str, model: str, rates: Rates | None) -> None:
        entries = self._load()
        entries[f"{provider}|{model}"] = (
            None if rates is None else {"prices": rates.to_json(), "context_window": rates.context_window}
        )
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".prices-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"day": self._day, "models": entries}, f)
            os.replace(tmp, self.path)
