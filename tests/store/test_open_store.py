"""``open_store`` picks the backend from the URL and refuses any other URL with a clear message."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from fairmeter.errors import ConfigError
from fairmeter.store import factory, open_store
from fairmeter.store.sqlite import SQLiteStore


def test_a_sqlite_url_opens_a_migrated_sqlite_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'fm.db'}"
    store = open_store(url, 0.0)
    assert isinstance(store, SQLiteStore) and store.url == url
    assert asyncio.run(store.list_keys()) == []
    asyncio.run(store.close())
    assert (tmp_path / "sub" / "fm.db").exists()


@pytest.mark.parametrize(
    ("url", "shown"),
    [("mysql://root:hunter2@db/fm", "mysql://…"), ("sqlite://fm.db", "sqlite://…"), ("fm.db", "'fm.db'")],
)
def test_an_unknown_url_is_refused_listing_the_accepted_ones(url: str, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_store(url, 0.0)
    message = str(info.value)
    assert message == f"unsupported database_url {shown}: expected sqlite:///PATH, postgresql://… or postgres://…"


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_a_postgres_url_without_the_backend_names_the_scheme(scheme: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fairmeter.store.postgres", None)  # as if the module were not there
    with pytest.raises(ConfigError) as info:
        open_store(f"{scheme}://fm:secret@127.0.0.1/fm", 0.0)
    assert str(info.value) == (
        f"database_url uses {scheme}://, but this version of fairmeter has no PostgreSQL backend; use sqlite:///PATH"
    )


def test_a_postgres_url_without_its_driver_names_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    def import_module(name: str) -> ModuleType:
        raise ModuleNotFoundError("No module named 'psycopg'", name="psycopg")

    monkeypatch.setattr(factory, "importlib", SimpleNamespace(import_module=import_module))
    with pytest.raises(ConfigError) as info:
        open_store("postgresql://127.0.0.1/fm", 0.0)
    assert "'psycopg'" in str(info.value) and "not installed" in str(info.value)


def test_a_postgres_url_is_handed_to_the_postgres_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[tuple[str, float]] = []
    backend = ModuleType("fairmeter.store.postgres")
    backend.PostgresStore = SimpleNamespace(lazy=lambda url, now, batch=True: opened.append((url, now)) or "the store")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fairmeter.store.postgres", backend)
    assert open_store("postgres://127.0.0.1/fm", 12.5) == "the store"
    assert opened == [("postgres://127.0.0.1/fm", 12.5)]
