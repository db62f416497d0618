"""The one storage protocol the gateway, the CLI and the tests use; SQLite and PostgreSQL implement it.

Every method is a coroutine, so a backend that talks to a server (PostgreSQL) never blocks the event
loop, and one that does not (SQLite) answers without yielding. Each method is one atomic unit: it
commits before its coroutine returns (``mark_forwarded`` is the one exception: it is queued and
joins the next commit, see docs/architecture.md).

Results are codes, not exceptions (TigerBeetle style): a hold that does not fit returns
``HoldOutcome("refused", …)``; an exception means a bug or a broken database.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from fairmeter.ledger.model import Account, Transfer
from fairmeter.money import Nano
from fairmeter.record import record
from fairmeter.store.records import CallEnd, CallStart, HoldOutcome, KeyRecord, next_cursor
from fairmeter.store.sql import Tx

T = TypeVar("T")


@record
class LapsedCall:
    """A pending call whose lease ran out (its gateway process stopped)."""

    id: str
    forwarded: bool
    estimate: Nano


@record
class CallPage:
    """Filters and cursor of ``list_calls`` (newest first)."""

    key_id: str | None = None
    limit: int = 100
    since: float | None = None  # float-ok: seconds
    until: float | None = None  # float-ok: seconds
    status: str | None = None
    cursor: tuple[float, str] | None = None  # float-ok: seconds; (started_at, id) of the previous page's last row


@record
class Books:
    """What `fairmeter verify` checks, all as of one instant: the accounts, the transfers, how many calls are
    pending, and the calls flagged for reconciliation (``id``, ``status``, ``billed_nano``, ``overrun_nano``)."""

    accounts: list[Account]
    transfers: list[Transfer]
    pending_calls: int
    reconciliation: list[dict[str, Any]]


class Store(Protocol):
    """Keys, the ledger and the call records."""

    url: str

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Background work of a serving process (e.g. SQLite's checkpointer); idempotent."""

    async def close(self) -> None:
        """Stop the background work and release the database; a queued ``mark_forwarded`` is committed first."""

    # ---- keys ------------------------------------------------------------------------------
    async def create_key(self, name: str, max_spend: Nano | None, admin: bool, now: float) -> tuple[KeyRecord, str]:
        """Create a key and its ledger account; returns the record and the secret (stored only as a hash)."""

    async def key_by_hash(self, digest: str) -> KeyRecord | None: ...

    async def list_keys(self) -> list[KeyRecord]: ...

    async def revoke_key(self, key_id: str, now: float) -> bool: ...

    async def key_spend(self, key_id: str) -> tuple[Nano, Nano]:
        """(posted, pending) debits of the key's account."""

    # ---- the hot path ----------------------------------------------------------------------
    async def begin_call(self, call: CallStart, idempotency_ttl_s: int) -> HoldOutcome:
        """Idempotency check, then the hold of ``call.reserved`` under every cap, atomically.

        The accounts are derived from the call: ``records.key_account(call.key_id)`` is debited,
        ``records.provider_account(call.provider)`` credited.
        """

    def mark_forwarded(self, call_id: str) -> None:
        """Record that the request left for the provider; queued, not waited for."""

    async def finish_call(
        self,
        call_id: str,
        end: CallEnd,
        now: float,
        *,
        void: bool = False,
        expired: bool = False,
        needs_reconciliation: bool = False,
        ride: bool = False,
    ) -> Nano:
        """Settle (post ``end.billed``, release the rest) or void a pending call; returns any overrun.

        A call that is no longer pending is left as it is (two resolutions never both apply).
        ``ride``: nobody is waiting for this commit (the client already has its response), so a store may
        commit it later with other such writes (SQLite: when the next call is forwarded, or after
        `fairmeter.store.batch.RIDE_S`).
        """

    async def record_refusal(self, call: CallStart, status: str, code: str, message: str, ended_at: float) -> None:
        """A call that never got a hold; no transfer is written."""

    async def record_replay(self, call: CallStart, original: str, ended_at: float) -> None:
        """A repeat of a settled call (same Idempotency-Key): its own record, charged nothing."""

    # ---- leases ----------------------------------------------------------------------------
    async def renew_leases(self, owner: str, until: float) -> int: ...

    async def lapsed_calls(self, now: float) -> list[LapsedCall]: ...

    # ---- reads -----------------------------------------------------------------------------
    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        """The ``calls`` row as a dict (the columns of migration m001)."""

    async def list_calls(self, page: CallPage) -> list[dict[str, Any]]: ...

    async def accounts(self) -> list[Account]: ...

    async def transfers(self) -> list[Transfer]: ...

    async def pending_count(self) -> int: ...

    async def reconciliation_calls(self) -> list[dict[str, Any]]: ...

    async def books(self) -> Books:
        """The four reads above in one read-only snapshot, so a check of the books while gateways write is never
        fooled by a commit that landed between two of its reads."""
        ...

    # ---- everything else ---------------------------------------------------------------------
    async def run(self, op: Callable[[Tx], Coroutine[Any, Any, T]]) -> T:
        """``op`` in one transaction of its own (admin changes, limits, explanations: SQL written once
        for both backends over :class:`fairmeter.store.sql.Tx`)."""


async def call_page(store: Store, page: CallPage) -> tuple[list[dict[str, Any]], str | None]:
    """One page of calls and the cursor of the next (None: the last), as ``GET /fairmeter/v1/calls`` and
    ``fairmeter calls list`` hand them out: one row more than the page is read, to know whether another follows."""
    return next_cursor(await store.list_calls(replace(page, limit=page.limit + 1)), page.limit)
