"""The books' invariants, checked over accounts and transfers (used by `fairmeter verify` and tests)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from fairmeter.ledger.model import RESOLVED_AS, Account, Transfer, TransferKind, TransferState
from fairmeter.money import Nano, usd_str
from fairmeter.record import record


@record
class Problem:
    """One thing wrong with (or worth reconciling in) the books."""

    # unbalanced | balance_mismatch | resolved_twice | dangling_resolution | cap_exceeded | overrun |
    # needs_reconciliation
    kind: str
    message: str
    account: str | None = None
    call_id: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"kind": self.kind, "message": self.message, "account": self.account, "call_id": self.call_id}


def _expected_balances(transfers: Iterable[Transfer]) -> dict[str, list[Nano]]:
    """Recompute [debits_pending, debits_posted, credits_pending, credits_posted] from the transfers."""
    out: dict[str, list[Nano]] = defaultdict(lambda: [0, 0, 0, 0])
    holds: dict[int, Transfer] = {}
    for t in transfers:
        if t.kind is TransferKind.HOLD:
            holds[t.id] = t
            if t.state is TransferState.PENDING:
                out[t.debit_account][0] += t.amount
                out[t.credit_account][2] += t.amount
        elif t.kind is not TransferKind.VOID:  # every other kind is posted when written
            out[t.debit_account][1] += t.amount
            out[t.credit_account][3] += t.amount
    return out


def _resolutions(transfers: list[Transfer]) -> list[Problem]:
    """A hold is resolved at most once, by a transfer of its own call; a resolution names a hold."""
    holds = {t.id: t for t in transfers if t.kind is TransferKind.HOLD}
    by_hold: dict[int, list[Transfer]] = defaultdict(list)
    out = []
    for t in transfers:
        if t.kind not in RESOLVED_AS or t.pending_id is None:
            continue
        hold = holds.get(t.pending_id)
        if hold is None or hold.call_id != t.call_id:
            out.append(Problem("dangling_resolution", f"transfer {t.id} ({t.kind}) of call {t.call_id} resolves "
                               f"{t.pending_id}, which is not a hold of that call", call_id=t.call_id))  # fmt: skip
        else:
            by_hold[hold.id].append(t)
    for hold_id, resolved in by_hold.items():
        if len(resolved) > 1:
            ids = ", ".join(str(t.id) for t in resolved)
            call = holds[hold_id].call_id
            out.append(Problem("resolved_twice", f"hold {hold_id} of call {call} is resolved {len(resolved)} times "
                               f"(transfers {ids}); a hold is resolved once", call_id=call))  # fmt: skip
    return out


def verify_books(accounts: Iterable[Account], transfers: Iterable[Transfer]) -> tuple[bool, bool, list[Problem]]:
    """Return (balanced, caps_ok, problems).

    *balanced*: total debits equal total credits, pending and posted separately, every account's stored
    balances equal what its transfers add up to, and every resolution names a hold of its call that nothing
    else resolves. *caps_ok*: no account's posted + pending debits exceed its cap, overruns aside (they are
    listed, not hidden).
    """
    accounts = list(accounts)
    transfers = list(transfers)
    problems: list[Problem] = []
    balanced = True
    dp = sum(a.debits_pending for a in accounts)
    cp = sum(a.credits_pending for a in accounts)
    dpo = sum(a.debits_posted for a in accounts)
    cpo = sum(a.credits_posted for a in accounts)
    if dp != cp or dpo != cpo:
        balanced = False
        problems.append(
            Problem(
                "unbalanced",
                f"debits and credits differ: pending {usd_str(dp)} vs {usd_str(cp)}, "
                f"posted {usd_str(dpo)} vs {usd_str(cpo)} USD",
            )
        )
    expected = _expected_balances(transfers)
    for a in accounts:
        want = expected.get(a.id, [0, 0, 0, 0])
        have = [a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted]
        if want != have:
            balanced = False
            problems.append(
                Problem(
                    "balance_mismatch",
                    f"account {a.id} stores balances {have} but its transfers add up to {want} (nano-USD)",
                    account=a.id,
                )
            )
    for problem in _resolutions(transfers):
        balanced = False
        problems.append(problem)
    overrun_by_account: dict[str, Nano] = defaultdict(int)
    for t in transfers:
        if t.kind is TransferKind.OVERRUN:
            overrun_by_account[t.debit_account] += t.amount
            problems.append(
                Problem(
                    "overrun",
                    f"call {t.call_id} cost {usd_str(t.amount)} USD more than its hold; posted as an overrun",
                    account=t.debit_account,
                    call_id=t.call_id,
                )
            )
    caps_ok = True
    for a in accounts:
        if a.cap is None:
            continue
        used = a.debits_posted + a.debits_pending - overrun_by_account.get(a.id, 0)
        if used > a.cap:
            caps_ok = False
            problems.append(
                Problem(
                    "cap_exceeded",
                    f"account {a.id} has {usd_str(used)} USD spent and held, above its cap of {usd_str(a.cap)} USD",
                    account=a.id,
                )
            )
    return balanced, caps_ok, problems
