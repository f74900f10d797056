"""Time sources: wall-clock milliseconds for stored TTLs, monotonic seconds for waits.

Imports nothing from Geomys; tests substitute a fake with the same two methods.
"""

import time
from typing import Protocol


class Clock(Protocol):
    """What the store and the engine need to know about time."""

    def wall_ms(self) -> int:
        """Milliseconds since the Unix epoch (for absolute TTLs)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for deadlines)."""


class SystemClock:
    """The real clocks of this machine."""

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()
