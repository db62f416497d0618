"""Storage behind one async protocol (`fairmeter.store.protocol.Store`): SQLite (WAL, one file) is the
default backend, PostgreSQL the shared one. `open_store` picks the backend from the database URL."""

from fairmeter.store.factory import open_store, run_with
from fairmeter.store.protocol import Store

__all__ = ["Store", "open_store", "run_with"]
