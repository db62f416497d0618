"""The sentences a person reads: why a call was refused, and which buckets paid for it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fairmeter.ledger.funding import Allocation, BucketKind, Refusal, WindowUse
from fairmeter.ledger.windows import Unit, utc_text
from fairmeter.money import usd_text
from fairmeter.record import record


def amount_text(amount: int, unit: Unit) -> str:
    return usd_text(amount) if unit is Unit.USD else f"{amount:,} tokens"


@record
class WindowState:
    """A subscription window's period as it stands (after a settlement, or now for /limits)."""

    name: str
    label: str  # "5-hour", "weekly"
    unit: Unit
    used: int
    held: int
    limit: int
    resets_at: float | None  # float-ok: seconds; None: a block that has not opened yet

    @property
    def room(self) -> int:
        return max(0, self.limit - self.used - self.held)

    def describe(self) -> str:
        """``$3.10 of $5.00 used, resets 2026-11-25 14:00 UTC``."""
        used = f"{amount_text(self.used, self.unit)} of {amount_text(self.limit, self.unit)} used"
        if self.held:
            used += f", {amount_text(self.held, self.unit)} held by calls in flight"
        reset = f"resets {utc_text(self.resets_at)}" if self.resets_at is not None else "opens with the next call"
        return f"{used}, {reset}"


def state_of(use: WindowUse) -> WindowState:
    """A window's period as a call at that moment sees it (a block this call would open has no reset yet)."""
    spec = use.spec
    return WindowState(
        spec.name, spec.label, spec.unit, use.used, use.held, spec.limit, None if use.opens else use.resets_at
    )


def refusal_message(refusal: Refusal, window: WindowState | None) -> str:
    """One sentence with the exact window, what was used, the limit, the reset, and which switch is off.

    ``window`` is the refusal's tightest window as it stands.
    """
    parts: list[str] = []
    if window is not None:
        if window.room == 0:
            parts.append(f"{window.label} allowance used up: {window.describe()}")
        else:
            parts.append(
                f"{window.label} allowance has {amount_text(window.room, window.unit)} left ({window.describe()})"
            )
    else:
        parts.append(
            f"this call may cost up to {usd_text(refusal.needed)} and only {usd_text(refusal.fundable)} is available"
        )
    parts.extend(refusal.blocked)
    return "; ".join(parts)


_SOURCE_WORDS = {
    BucketKind.CREDITS: "purchased credits",
    BucketKind.OVERAGE: "overage (billed later)",
}


def explain_payment(paid: Allocation, windows: Sequence[WindowState], grant_reasons: Mapping[str, str]) -> str:
    """One line: how much each bucket paid and why the later buckets were (not) touched.

    ``windows`` are the subscription windows after this settlement; ``grant_reasons`` the reason of
    each grant by id.
    """
    total = paid.total
    if total == 0:
        return "Nothing was charged."
    pieces = []
    for p in paid.portions:
        if p.bucket is BucketKind.SUBSCRIPTION:
            where = _subscription_words(windows)
        elif p.bucket is BucketKind.GRANTS:
            reason = grant_reasons.get(p.source)
            where = f"grant {p.source}" + (f" ({reason})" if reason else "")
        else:
            where = _SOURCE_WORDS[p.bucket]
        pieces.append((p.amount, where))
    sub = paid.amount_of(BucketKind.SUBSCRIPTION)
    if len(pieces) == 1:
        line = f"Paid {usd_text(total)} from {pieces[0][1]}"
    else:
        line = f"Paid {usd_text(total)}: " + ", then ".join(f"{usd_text(a)} from {w}" for a, w in pieces)
    if sub == total:
        return line + "; credits untouched because the subscription had room."
    if windows:
        tight = min(windows, key=lambda w: w.room)
        why = "had no room" if sub == 0 else f"had only {usd_text(sub)} of room for it"
        return f"{line}; the subscription {why} ({tight.label} window: {tight.describe()})."
    return line + "."


def _subscription_words(windows: Sequence[WindowState]) -> str:
    if len(windows) == 1:
        return f"the {windows[0].label} window ({windows[0].describe()})"
    return "the subscription (" + "; ".join(f"{w.label} window: {w.describe()}" for w in windows) + ")"
