"""Leases: renew this process's holds while their calls run; resolve holds whose lease lapsed.

A lease outlives the upstream timeout (``lease_s = upstream_timeout_s + lease_margin_s``) and is
renewed every ``lease_s / 3`` for all of this process's pending calls in one statement. When a
process dies its leases lapse; any gateway sharing the database then resolves those holds, at
start and every ``expiry_interval_s``:

* never forwarded → voided (cost 0);
* forwarded → settled at its estimate (the prompt, counted locally), ``usage_status: unknown``,
  flagged ``needs_reconciliation`` because the provider probably billed it.

The same sweep posts the expiry of grants that have run out (docs/funding.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fairmeter.gateway.state import GatewayState
from fairmeter.store.admin_sql import lapse_grants
from fairmeter.store.protocol import LapsedCall
from fairmeter.store.records import CallEnd

log = logging.getLogger("fairmeter.leases")


async def expire_lapsed(state: GatewayState) -> int:
    """Resolve every pending hold whose lease has lapsed; returns how many were found.

    The settlements are queued together, so they share one group commit. A hold another gateway
    resolves meanwhile is left as that one resolved it (``finish_call`` only settles a pending call).
    """
    now = state.clock.now()
    lapsed = await state.store.lapsed_calls(now)
    await asyncio.gather(*(_resolve(state, call, now) for call in lapsed))
    if lapsed:
        log.warning("resolved %d hold(s) whose lease lapsed", len(lapsed))
    grants = await state.store.run(lambda tx: lapse_grants(tx, now))
    if grants:
        log.info("posted the expiry of %d grant(s)", grants)
    return len(lapsed)


async def _resolve(state: GatewayState, call: LapsedCall, now: float) -> None:
    """Never forwarded → void; forwarded → settle at the prompt estimate, flagged for reconciliation."""
    forwarded = call.forwarded
    end = CallEnd(
        status="upstream_cut" if forwarded else "upstream_error",
        upstream_status=None,
        usage_status="unknown" if forwarded else "error",
        usage_json=None,
        cost_usd=None if forwarded else "0",
        billed=call.estimate if forwarded else 0,
        estimated=forwarded,
        breakdown_json=None,
        ended_at=now,
        message=(
            "the gateway process holding this call stopped; settled at the prompt estimate "
            "and flagged for reconciliation"
            if forwarded
            else "the gateway process holding this call stopped before forwarding it; hold voided"
        ),
    )
    await state.store.finish_call(
        call.id, end, now, void=not forwarded, expired=forwarded, needs_reconciliation=forwarded
    )


class LeaseKeeper:
    """The two background tasks of a gateway process."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await expire_lapsed(self.state)
        self._tasks = [asyncio.create_task(self._renew()), asyncio.create_task(self._expire())]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _renew(self) -> None:
        state = self.state
        while True:
            await asyncio.sleep(state.config.lease_s / 3)
            until = state.clock.now() + state.config.lease_s
            try:
                await state.store.renew_leases(state.owner, until)
            except Exception:
                log.exception("lease renewal failed")

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(self.state.config.expiry_interval_s)
            try:
                await expire_lapsed(self.state)
            except Exception:
                log.exception("lease expiry failed")
