"""Injected clocks. Queue, batcher, admission, controller and simulator read time only here.

Time is a float in seconds. Only differences are meaningful (monotonic, not wall time).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Source of monotonic time in seconds."""

    def now(self) -> float:
        """Current time in seconds; never decreases."""
        ...


class MonotonicClock:
    """The live clock: `time.monotonic()`."""

    def now(self) -> float:
        return time.monotonic()


class SimClock:
    """A simulated clock advanced explicitly by the event engine or a test.

    Contract: `advance_to(t)` with t < now raises ValueError (time never goes back).
    """

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)

    def now(self) -> float:
        return self._t

    def advance_to(self, t: float) -> None:
        if t < self._t:
            raise ValueError(f"SimClock cannot go back from {self._t} to {t}")
        self._t = float(t)

    def advance(self, dt: float) -> None:
        if dt < 0:
            raise ValueError(f"SimClock cannot advance by a negative step {dt}")
        self._t += float(dt)
