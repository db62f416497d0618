"""A clock that only moves when a test moves it."""

from __future__ import annotations


class FrozenClock:
    """Satisfies `fairmeter.clock.Clock`; time stands still until `advance` is called.

    The default start (2025-11-24T16:00:00Z) is a fixed, recent instant so that dated prices and
    windows behave as they would today.
    """

    def __init__(self, start: float = 1_764_000_000.0) -> None:  # float-ok: seconds
        self._now = start

    def now(self) -> float:  # float-ok: seconds
        """The frozen instant, in seconds since the epoch."""
        return self._now

    def advance(self, seconds: float) -> None:  # float-ok: seconds
        """Move time forward by `seconds` (never backwards: windows and leases assume monotonic time)."""
        if seconds < 0:
            raise ValueError(f"a FrozenClock only moves forward; advance({seconds}) was asked")
        self._now += seconds
