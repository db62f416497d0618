"""Rates for a model: config overrides first, then the `genai-prices` package (the only importer of it)."""

from fairmeter.catalog.catalog import Catalog

__all__ = ["Catalog"]
