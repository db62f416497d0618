"""Shared fixtures: a real emulator on a real port, and a real gateway per test on its own SQLite file."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from tests.sync_store import SyncStore

from fairmeter.config import Config, parse_config
from fairmeter.gateway.server import GatewayServer
from fairmeter.store.protocol import CallPage
from fairmeter.testing import EmulatorServer

UPSTREAM_KEY = "sk-upstream-secret-never-shown"

# No per-example deadline: hypothesis' default (200 ms) is a timed assertion, and this machine is shared and noisy.
settings.register_profile("fairmeter", deadline=None)
settings.load_profile("fairmeter")


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer() as emu:
        yield emu


def gateway_config(emu: EmulatorServer, db: Path, **extra: Any) -> Config:
    data: dict[str, Any] = {
        "database_url": f"sqlite:///{db}",
        "upstreams": {
            "openai": {"base_url": emu.openai_base_url, "api_key_env": "FM_TEST_UPSTREAM"},
            "anthropic": {"base_url": emu.origin, "api_key_env": "FM_TEST_UPSTREAM"},
        },
    }
    data.update(extra)
    return parse_config(data, {"FM_TEST_UPSTREAM": UPSTREAM_KEY}, "test")


class Gw:
    """A running gateway with helpers to make keys."""

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.origin = server.origin
        self.openai_base_url = server.openai_base_url
        # The tests' own connection: the gateway's is used by its event-loop thread, and sharing it
        # would let a test read a transaction the gateway has not committed yet.
        self.store = SyncStore.open(server.state.config.database_url)
        self.clients: list[Any] = []

    def close_clients(self) -> None:
        for c in self.clients:
            c.close()
        self.store.close()

    def key(self, max_spend_nano: int | None = None, admin: bool = False, name: str = "test") -> tuple[str, str]:
        """Create a key; returns (key id, secret)."""
        rec, secret = self.store.create_key(name, max_spend_nano, admin, self.server.state.clock.now())
        return rec.id, secret

    def call(self, call_id: str, wait: float = 5.0) -> dict[str, Any]:
        """The call record, once settled (a stream is settled just after its last byte is sent)."""
        from fairmeter.store.records import call_json

        deadline = time.monotonic() + wait
        while True:
            row = self.store.get_call(call_id)
            if row is not None and row["status"] != "pending":
                return call_json(row)
            if time.monotonic() > deadline:
                raise AssertionError(f"call {call_id} not settled: {row}")
            time.sleep(0.01)

    def spend(self, key_id: str, wait: float = 5.0) -> tuple[int, int]:
        """The key's (spent, held) once none of its calls is pending: a call is settled just after its client
        has the response (the gateway's own API waits for that; this test thread polls)."""
        deadline = time.monotonic() + wait
        while self.store.list_calls(CallPage(key_id, limit=1, status="pending")):
            if time.monotonic() > deadline:
                raise AssertionError(f"calls of {key_id} still pending after {wait} s")
            time.sleep(0.005)
        spend: tuple[int, int] = self.store.key_spend(key_id)
        return spend

    def calls(self) -> list[dict[str, Any]]:
        from fairmeter.store.records import call_json

        rows = self.store.list_calls(CallPage(limit=1000))
        return [self.call(r["id"]) if r["status"] == "pending" else call_json(r) for r in rows]


@pytest.fixture
def gateway(emulator: EmulatorServer, tmp_path: Path) -> Iterator[Gw]:
    with GatewayServer(gateway_config(emulator, tmp_path / "fm.db")) as server:
        gw = Gw(server)
        try:
            yield gw
        finally:
            gw.close_clients()
