"""Time windows of a subscription and calendar periods of caps (pure arithmetic on UTC seconds).

* A **block** window (e.g. 5 hours) opens with the first call after the previous block closed, and
  lasts ``length_s`` from that call.
* A **weekly** window starts at the plan's anchor (a weekday and a UTC time of day) and lasts 7 days.
* Caps on pay-as-you-go spend count per calendar **period**: a UTC day, an ISO week (from Monday
  00:00 UTC), a calendar month, or ``total`` (never resets).

A hold counts in the period it was placed in; its settlement posts to that same period, even when
the period has closed since (so a period's used amount never changes after it closes, except by a
refund).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache

from fairmeter.record import record

WEEK_S = 7 * 86_400
_MONDAY_1970 = 4 * 86_400  # 1970-01-05 00:00 UTC, the first Monday after the epoch
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class WindowKind(StrEnum):
    BLOCK = "block"
    WEEKLY = "weekly"


class Unit(StrEnum):
    USD = "usd"  # limits and amounts in nano-USD at list price
    TOKENS = "tokens"  # all tokens of a call, every class


class Period(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    TOTAL = "total"


@record
class WindowSpec:
    """One subscription window of a plan."""

    name: str  # unique in its plan, e.g. "5h" or "weekly"
    kind: WindowKind
    limit: int  # nano-USD or tokens, by ``unit``
    unit: Unit = Unit.USD
    length_s: int = 5 * 3600  # a block's length; a weekly window is always 7 days
    anchor_weekday: int = 0  # weekly: 0 = Monday … 6 = Sunday
    anchor_s: int = 0  # weekly: seconds after 00:00 UTC on that weekday

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a window needs a name")
        if self.limit < 0:
            raise ValueError(f"window {self.name}: the limit cannot be negative")
        if self.kind is WindowKind.BLOCK and self.length_s <= 0:
            raise ValueError(f"window {self.name}: a block needs a positive length")
        if not 0 <= self.anchor_weekday <= 6 or not 0 <= self.anchor_s < 86_400:
            raise ValueError(f"window {self.name}: the anchor must be a weekday 0-6 and a time of day")

    @property
    def span_s(self) -> int:
        return WEEK_S if self.kind is WindowKind.WEEKLY else self.length_s

    @property
    def label(self) -> str:
        """How a person names the window: "5-hour", "weekly"."""
        if self.kind is WindowKind.WEEKLY:
            return "weekly"
        hours, rest = divmod(self.length_s, 3600)
        return f"{hours}-hour" if rest == 0 else f"{self.length_s // 60}-minute"


def window_start(spec: WindowSpec, open_start: float | None, now: float) -> tuple[float, bool]:  # float-ok: seconds
    """The start of the period a call at ``now`` counts in, and whether that call opens it.

    ``open_start`` is the start of the latest block of a block window (None if it never had one);
    weekly windows ignore it. A call stamped before that block began (calls are stamped on arrival and
    placed when they get the payer's lock, so a later call can open the block first) counts in it: a
    block never opens before the latest one, where two overlapping blocks would each grant the limit.
    """
    if spec.kind is WindowKind.WEEKLY:
        anchor = _MONDAY_1970 + spec.anchor_weekday * 86_400 + spec.anchor_s
        return anchor + math.floor((now - anchor) / WEEK_S) * WEEK_S, False
    if open_start is not None and now < open_start + spec.length_s:
        return open_start, False
    return now, True


def period_bounds(period: Period, now: float) -> tuple[float, float | None]:  # float-ok: seconds
    """[start, end) of the calendar period containing ``now`` (end None for ``total``)."""
    if period is Period.TOTAL:
        return 0.0, None
    if period is Period.DAY:
        start = math.floor(now / 86_400) * 86_400
        return float(start), float(start + 86_400)  # float-ok: seconds
    if period is Period.WEEK:
        start = _MONDAY_1970 + math.floor((now - _MONDAY_1970) / WEEK_S) * WEEK_S
        return float(start), float(start + WEEK_S)  # float-ok: seconds
    return _month_of_day(math.floor(now / 86_400))


@lru_cache(maxsize=64)
def _month_of_day(day_number: int) -> tuple[float, float | None]:  # float-ok: seconds
    """The calendar month containing UTC day ``day_number`` (days since the epoch); every call asks it."""
    day = datetime.fromtimestamp(day_number * 86_400, tz=UTC)
    first = datetime(day.year, day.month, 1, tzinfo=UTC)
    nxt = datetime(day.year + (day.month == 12), day.month % 12 + 1, 1, tzinfo=UTC)
    return first.timestamp(), nxt.timestamp()


def utc_text(ts: float) -> str:  # float-ok: seconds
    """``2026-11-30 09:00 UTC``: rounded up to the minute, so a stated reset is never earlier than the real one."""
    return datetime.fromtimestamp(math.ceil(ts / 60) * 60, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
