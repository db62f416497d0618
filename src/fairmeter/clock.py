"""Time, injected: production uses `SystemClock`, tests use `fairmeter.testing.FrozenClock`."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock seconds since the epoch (float seconds are time, not money)."""

    def now(self) -> float: ...  # float-ok: seconds


class SystemClock:
    """The real wall clock."""

    def now(self) -> float:  # float-ok: seconds
        return time.time()
