"""Storage adapters behind one protocol. SQLite (WAL, one file) is the default backend."""
