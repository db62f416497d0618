"""Who pays for a call: the payer's funding buckets, burned in a fixed order (docs/funding.md).

The buckets, in the default order:

1. **subscription**: one or more windows (``fairmeter.ledger.windows``); a call takes from the
   subscription as much as the smallest room left across its windows;
2. **grants**: promotional or compensation credits; lowest priority number first, then the soonest
   expiry, then the oldest; only while live (``starts_at <= now < expires_at``);
3. **credits**: purchased, prepaid;
4. **overage**: post-paid, under its own cap.

Grants and credits are only used when the payer's ``spill_to_credits`` switch is on, and together
stay under the spill cap; overage only when ``overage_enabled`` is on. The order is configurable per
plan.

Everything here is pure: the store reads the payer's state inside the hold's transaction, calls
:func:`allocate`, and writes what it returns, so the decision and the postings cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import field
from enum import StrEnum

from fairmeter.ledger.windows import Unit, WindowSpec
from fairmeter.money import Nano, usd_text
from fairmeter.record import record


class BucketKind(StrEnum):
    SUBSCRIPTION = "subscription"
    GRANTS = "grants"
    CREDITS = "credits"
    OVERAGE = "overage"


DEFAULT_ORDER: tuple[BucketKind, ...] = (
    BucketKind.SUBSCRIPTION,
    BucketKind.GRANTS,
    BucketKind.CREDITS,
    BucketKind.OVERAGE,
)
SPILL_BUCKETS = (BucketKind.GRANTS, BucketKind.CREDITS)


def check_order(order: Sequence[str]) -> tuple[BucketKind, ...]:
    """A plan's burn order: each of the four buckets at most once."""
    kinds = tuple(BucketKind(name) for name in order)
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"a bucket is listed twice in the burn order {list(order)}")
    if not kinds:
        raise ValueError("the burn order needs at least one bucket")
    return kinds


@record
class WindowUse:
    """A window's current period, as a call at ``now`` sees it."""

    spec: WindowSpec
    start: float  # float-ok: seconds
    opens: bool  # no block was open: this call opens one at ``start``
    used: int  # posted in this period, in the window's unit
    held: int  # pending in this period

    @property
    def room(self) -> int:
        return max(0, self.spec.limit - self.used - self.held)

    @property
    def resets_at(self) -> float:  # float-ok: seconds
        return self.start + self.spec.span_s


@record
class Grant:
    """One grant and what is spent (posted) and held from it."""

    id: str
    amount: Nano
    used: Nano
    held: Nano
    priority: int
    starts_at: float  # float-ok: seconds
    expires_at: float  # float-ok: seconds
    created_at: float  # float-ok: seconds
    reason: str = ""

    def live(self, now: float) -> bool:  # float-ok: seconds
        return self.starts_at <= now < self.expires_at

    def room(self, now: float) -> Nano:  # float-ok: seconds
        return max(0, self.amount - self.used - self.held) if self.live(now) else 0

    @property
    def burn_key(self) -> tuple[int, float, float, str]:  # float-ok: seconds
        return (self.priority, self.expires_at, self.created_at, self.id)


@record
class Funding:
    """A payer's buckets as read inside the hold's transaction.

    ``spill_room`` is what the spill cap still allows this period (None: no cap); ``overage_room``
    likewise for the overage cap (None: no cap).
    """

    order: tuple[BucketKind, ...] = DEFAULT_ORDER
    windows: tuple[WindowUse, ...] = ()
    grants: tuple[Grant, ...] = ()
    credits_room: Nano = 0
    spill_to_credits: bool = False
    spill_room: Nano | None = None
    overage_enabled: bool = False
    overage_room: Nano | None = None

    def live_grants(self, now: float) -> list[Grant]:  # float-ok: seconds
        """Grants that can pay now, in burn order."""
        return sorted((g for g in self.grants if g.room(now) > 0), key=lambda g: g.burn_key)


@record
class Size:
    """A call's size: nano-USD and tokens (all classes). Worst case at hold, actual at settlement."""

    usd: Nano
    tokens: int = 0


@record
class Portion:
    """Part of a call paid (or held) by one bucket; ``source`` is the grant id for grants."""

    bucket: BucketKind
    source: str
    amount: Nano


@record
class WindowCharge:
    """What one subscription window holds or is charged for a call, in the window's unit."""

    name: str
    start: float  # float-ok: seconds
    amount: int
    unit: Unit = Unit.USD


@record
class Allocation:
    """Where a hold (or a settlement) sits: the portions in burn order and the window charges."""

    portions: tuple[Portion, ...]
    windows: tuple[WindowCharge, ...] = ()

    @property
    def total(self) -> Nano:
        total = 0  # a loop, not sum() over a generator: this runs several times for every call
        for p in self.portions:
            total += p.amount
        return total

    def amount_of(self, bucket: BucketKind) -> Nano:
        total = 0
        for p in self.portions:
            if p.bucket is bucket:
                total += p.amount
        return total


@record
class Refusal:
    """Why a hold of ``needed`` does not fit: the numbers a person needs to understand it."""

    needed: Nano
    fundable: Nano  # the most the allowed buckets could hold now
    tightest: WindowUse | None  # the subscription window with the least room (None without a subscription)
    subscription_room: Nano  # nano-USD the subscription could take
    blocked: tuple[str, ...] = field(default=())  # what stopped the spill, in plain words


def _window_roomusd_text(use: WindowUse, size: Size) -> Nano:
    """A window's room in nano-USD for this call: a token room converts at the call's own USD per token."""
    if use.spec.unit is Unit.USD or size.tokens == 0:
        return use.room if use.spec.unit is Unit.USD else size.usd
    return size.usd * use.room // size.tokens


def _charges(windows: Sequence[WindowUse] | Sequence[WindowCharge], usd: Nano, size: Size) -> tuple[WindowCharge, ...]:
    """What each window is charged when the subscription takes ``usd`` of a call of ``size``.

    A USD window is charged ``usd``; a token window the same share of the call's tokens, rounded up
    (never undercounted). A call priced at $0 is charged to no window.
    """
    out = []
    for w in windows:
        name, start, unit = (
            (w.spec.name, w.start, w.spec.unit) if isinstance(w, WindowUse) else (w.name, w.start, w.unit)
        )
        amount = usd if unit is Unit.USD else (-(-size.tokens * usd // size.usd) if size.usd else 0)
        out.append(WindowCharge(name, start, amount, unit))
    return tuple(out)


def subscription_room(funding: Funding, size: Size) -> tuple[Nano, WindowUse | None]:
    """What the subscription can take of a call of ``size`` (nano-USD), and its tightest window."""
    if not funding.windows:
        return 0, None
    rooms = [(_window_roomusd_text(w, size), w) for w in funding.windows]
    room, tightest = min(rooms, key=lambda r: r[0])
    return min(room, size.usd), tightest


def allocate(funding: Funding, size: Size, now: float) -> Allocation | Refusal:  # float-ok: seconds
    """Place a hold of ``size.usd`` on the buckets in burn order, or say why it does not fit."""
    rest = size.usd
    portions: list[Portion] = []
    windows = _charges(funding.windows, 0, size)  # every window is listed, so its period is known
    spill_left = funding.spill_room
    sub_room, tightest = subscription_room(funding, size)
    for bucket in funding.order:
        if rest == 0:
            break
        if bucket is BucketKind.SUBSCRIPTION and funding.windows:
            take = min(rest, sub_room)
            windows = _charges(funding.windows, take, size)
            if take:
                portions.append(Portion(bucket, bucket.value, take))
            rest -= take
        elif bucket in SPILL_BUCKETS and funding.spill_to_credits:
            sources = (
                [(g.id, g.room(now)) for g in funding.live_grants(now)]
                if bucket is BucketKind.GRANTS
                else [(bucket.value, funding.credits_room)]
            )
            for source, room in sources:
                take = min(rest, room, rest if spill_left is None else spill_left)
                if take > 0:
                    portions.append(Portion(bucket, source, take))
                    rest -= take
                    spill_left = None if spill_left is None else spill_left - take
        elif bucket is BucketKind.OVERAGE and funding.overage_enabled:
            take = min(rest, rest if funding.overage_room is None else funding.overage_room)
            if take > 0:
                portions.append(Portion(bucket, bucket.value, take))
                rest -= take
    if rest > 0:
        return Refusal(
            needed=size.usd,
            fundable=size.usd - rest,
            tightest=tightest,
            subscription_room=sub_room,
            blocked=_blocked(funding, now, spill_left),
        )
    return Allocation(tuple(portions), windows)


def _blocked(funding: Funding, now: float, spill_left: Nano | None) -> tuple[str, ...]:  # float-ok: seconds
    """What kept the later buckets from covering the rest, in the words of a refusal."""
    out: list[str] = []
    wants_spill = any(b in SPILL_BUCKETS for b in funding.order)
    if wants_spill and not funding.spill_to_credits:
        out.append("pay-as-you-go credits are off for this account")
    elif wants_spill:
        if spill_left == 0:
            out.append("the pay-as-you-go cap for this period is reached")
        else:
            have = funding.credits_room + sum(g.room(now) for g in funding.grants)
            out.append(f"credits and grants have {usd_text(have)} left")
    if BucketKind.OVERAGE in funding.order:
        if not funding.overage_enabled:
            out.append("overage is off")
        elif funding.overage_room is not None:
            out.append(f"the overage cap has {usd_text(funding.overage_room)} left")
    return tuple(out)


@record
class Draw:
    """How a settlement splits a call's real cost over its held portions."""

    paid: Allocation  # what each bucket pays (and each window is charged)
    released: Nano  # hold returned to the buckets
    unplaced: Nano  # cost no held portion could take (above the hold, or an expired grant's share)


def draw(held: Allocation, actual: Size, grant_live: Callable[[str], bool]) -> Draw:
    """Draw the real cost from the held portions in burn order; the rest of the hold is released.

    A call that costs less than its subscription portion is paid by the subscription alone. A token
    window is never charged more tokens than it held: the subscription then pays only the share of
    the call those tokens cover. A grant that expired since the hold pays nothing (an expired grant
    is never spent). Such shares, and any cost above the hold, come back as ``unplaced`` for the
    caller to place on current room (:func:`allocate`) or post as a flagged overrun.
    """
    rest = actual.usd
    paid: list[Portion] = []
    windows = _charges(held.windows, 0, actual)
    for portion in held.portions:
        take = min(rest, portion.amount)
        if portion.bucket is BucketKind.GRANTS and not grant_live(portion.source):
            take = 0
        if portion.bucket is BucketKind.SUBSCRIPTION:
            take = _token_limited(held.windows, take, actual)
            windows = _charges(held.windows, take, actual)
        if take > 0:
            paid.append(Portion(portion.bucket, portion.source, take))
            rest -= take
    return Draw(Allocation(tuple(paid), windows), released=held.total - (actual.usd - rest), unplaced=rest)


def _token_limited(held: tuple[WindowCharge, ...], usd: Nano, actual: Size) -> Nano:
    """Lower the subscription's payment until no token window's charge passes what it held."""
    for w in held:
        if w.unit is Unit.TOKENS and actual.tokens:
            usd = min(usd, actual.usd * w.amount // actual.tokens)
    return usd
