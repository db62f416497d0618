"""Everything one gateway process shares between requests, built once at start."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass, field

from fairmeter.catalog import Catalog
from fairmeter.clock import Clock
from fairmeter.config import Config
from fairmeter.errors import InvalidApiKey
from fairmeter.gateway.meter import Meter
from fairmeter.gateway.upstream import UpstreamClient
from fairmeter.store.protocol import Store
from fairmeter.store.records import KEY_PREFIX, KeyRecord, hash_key, iso

KEY_CACHE_S = 1.0  # a revoked key stops working within this many seconds


@dataclass
class GatewayState:
    config: Config
    clock: Clock
    store: Store
    catalog: Catalog
    meter: Meter
    upstream: UpstreamClient
    # The lease owner: this process (its pid, for an operator) on this start (random: pids are reused).
    owner: str = field(default_factory=lambda: f"gw_{os.getpid()}_{secrets.token_hex(4)}")
    _keys: dict[str, tuple[KeyRecord | None, float]] = field(default_factory=dict)
    # Settlements under way whose client already has its response (call id → done), so that a read of this
    # process's API waits for them: a client that has its response finds the call settled (`settled`).
    settling: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    # The same settlements by (key id, Idempotency-Key), for a repeat that arrives while its call settles.
    settling_keys: dict[tuple[str, str], asyncio.Future[None]] = field(default_factory=dict)
    _id_part: str = field(default_factory=lambda: secrets.token_hex(4))
    _calls: int = 0

    async def settled(self) -> None:
        """Wait until every settlement this process has begun has committed (at most a group commit's wait)."""
        if self.settling:
            await asyncio.wait(list(self.settling.values()))

    def new_call_id(self) -> str:
        """Time-ordered (microseconds, hex), then this process's random part and a counter: new rows land at the
        end of the id index, and no two processes (or restarts) share the random part. One ``os.urandom`` per
        process, not per call: it is a system call, ~2 % of a call's CPU when made per call."""
        self._calls = (self._calls + 1) & 0xFFFFFF
        return f"call_{time.time_ns() // 1000:x}{self._id_part}{self._calls:06x}"

    async def authenticate(self, headers: list[tuple[bytes, bytes]]) -> KeyRecord:
        """The fairmeter key from ``Authorization: Bearer`` or ``x-api-key``; refuses anything else."""
        secret = None
        for name, value in headers:
            if name == b"authorization":
                v = value.decode("latin-1")
                if v[:7].lower() == "bearer ":
                    secret = v[7:].strip()
            elif name == b"x-api-key":
                secret = value.decode("latin-1").strip()
            if secret:
                break
        if not secret:
            raise InvalidApiKey(
                "No fairmeter key was sent: pass it as 'Authorization: Bearer fm-…' or 'x-api-key: fm-…'."
            )
        if not secret.startswith(KEY_PREFIX):
            raise InvalidApiKey("That is not a fairmeter key (fairmeter keys start with 'fm-').")
        now = self.clock.now()
        digest = hash_key(secret)  # the cache, like the database, never holds a key itself
        hit = self._keys.get(digest)
        if hit is None or now - hit[1] > KEY_CACHE_S:
            if len(self._keys) > 10_000:
                self._keys.clear()
            hit = (await self.store.key_by_hash(digest), now)
            self._keys[digest] = hit
        key = hit[0]
        if key is None:
            raise InvalidApiKey("This fairmeter key is not valid: no such key exists.")
        if key.revoked_at is not None:
            raise InvalidApiKey(f"This fairmeter key ({key.id}) was revoked at {iso(key.revoked_at)}.")
        return key
