"""Accounts change only by transfers (TigerBeetle's model, in integer nano-USD).

A call moves money in two legs, each a pair of hold → post transfers:

* **spend**: from the key's account (``key:ID``, which carries the key's cap) to the upstream
  provider's account (``provider:NAME``);
* **funding**: from the payer's funding buckets (``sub:PAYER``, ``grant:ID``, ``credits:PAYER``,
  ``overage:PAYER``; docs/funding.md) to the key's account, one transfer per bucket that pays, so a
  key's account nets to zero and every dollar a provider is owed is traced to the bucket it came from.

Grants and purchased credits are credited to their bucket by ``issue`` and ``topup`` transfers; what
an expired grant had left moves out by a ``lapse`` transfer; refunds move money back by ``refund``
(or ``regrant``) transfers. The spend leg's kinds:

* ``hold``: a *pending* transfer of the worst case W; refused when it would take the payer's
  posted + pending debits past its cap.
* ``post``: the real cost, at most W, referencing the hold: it resolves the hold (posted) and the rest
  is released.
* ``overrun``: if the real cost is ever above W it is never clamped: the difference is posted as a
  separate transfer, flagged, and reported by ``verify``.
* ``void``: a failed call releases the whole hold (cost 0).
* ``expire``: a lapsed lease resolves a hold (void if never forwarded, else posted at its estimate).

Nothing is ever edited or deleted: the ledger is append-only (the database refuses an ``UPDATE`` or ``DELETE`` of a
transfer). As in TigerBeetle, a hold's row keeps the state it was written with, ``pending``, and what became of it
is the transfer that resolves it, whose ``pending_id`` is the hold's id: a ``post`` (of the cost, or of what that
funding bucket paid), a ``void`` (nothing) or an ``expire`` (a lapsed lease, posted at the estimate). Every hold
gets exactly one, in the settlement's transaction. `with_outcomes` gives each hold its outcome when the transfers
are read. (Holds resolved before migration m003 had their state column updated instead; it is read as it is.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from enum import StrEnum

from fairmeter.money import Nano
from fairmeter.record import record


class TransferKind(StrEnum):
    HOLD = "hold"
    POST = "post"
    VOID = "void"
    EXPIRE = "expire"
    OVERRUN = "overrun"
    ISSUE = "issue"  # a grant is issued to a payer (issuer:grants → grant:ID)
    TOPUP = "topup"  # purchased credits (issuer:topups → credits:PAYER)
    LAPSE = "lapse"  # what was left of an expired grant (grant:ID → expired:grants)
    REFUND = "refund"  # money back to the bucket that paid (provider:P → bucket account)
    REGRANT = "regrant"  # a refund whose bucket is gone becomes a new grant (provider:P → grant:NEW)


class TransferState(StrEnum):
    PENDING = "pending"
    POSTED = "posted"
    VOIDED = "voided"
    EXPIRED = "expired"


@record
class Account:
    """Balances of one account; ``cap`` limits posted + pending debits (None: no cap)."""

    id: str
    cap: Nano | None
    debits_pending: Nano
    debits_posted: Nano
    credits_pending: Nano
    credits_posted: Nano


@record
class Transfer:
    """One ledger entry: ``amount`` moves from ``debit_account`` to ``credit_account``.

    ``state``: as written, except a hold's as read through `with_outcomes` (what the transfer resolving it made of it).
    """

    id: int
    call_id: str
    kind: TransferKind
    debit_account: str
    credit_account: str
    amount: Nano
    pending_id: int | None
    state: TransferState


# The kinds that resolve the hold they reference, and what each makes of it.
RESOLVED_AS = {TransferKind.POST: TransferState.POSTED, TransferKind.VOID: TransferState.VOIDED,
             TransferKind.EXPIRE: TransferState.EXPIRED}  # fmt: skip


def with_outcomes(transfers: Iterable[Transfer]) -> list[Transfer]:
    """The transfers as written, each resolved hold with its outcome: posted, voided or expired after the kind of
    the ``post``, ``void`` or ``expire`` that references it (an ``overrun`` references the hold too, but resolves
    nothing). A hold nothing references keeps the state it was written with: ``pending``."""
    rows = list(transfers)
    outcome = {t.pending_id: RESOLVED_AS[t.kind] for t in rows if t.pending_id is not None and t.kind in RESOLVED_AS}
    return [replace(t, state=outcome[t.id]) if t.kind is TransferKind.HOLD and t.id in outcome else t for t in rows]


@record
class HoldRefused:
    """Why a hold did not fit: the cap, what is posted, what is held, and this call's hold."""

    cap: Nano
    spent: Nano
    held: Nano
    amount: Nano

    @property
    def room(self) -> Nano:
        return max(0, self.cap - self.spent - self.held)


def check_hold(cap: Nano | None, spent: Nano, held: Nano, amount: Nano) -> HoldRefused | None:
    """None when a hold of ``amount`` fits under ``cap``; otherwise the numbers of the refusal."""
    if amount < 0:
        raise ValueError("a hold cannot be negative")
    if cap is None or spent + held + amount <= cap:
        return None
    return HoldRefused(cap=cap, spent=spent, held=held, amount=amount)


@record
class Settlement:
    """How a hold of ``held`` is resolved for a real cost of ``actual``."""

    posted: Nano  # posted against the hold (≤ held)
    released: Nano  # returned to the payer's room
    overrun: Nano  # posted beyond the hold, flagged; never clamped


def settlement_for(held: Nano, actual: Nano) -> Settlement:
    """Split a real cost against its hold. ``posted + overrun == actual``; ``posted + released == held``."""
    if held < 0 or actual < 0:
        raise ValueError("amounts cannot be negative")
    posted = min(held, actual)
    return Settlement(posted=posted, released=held - posted, overrun=actual - posted)
