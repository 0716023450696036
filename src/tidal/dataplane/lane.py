"""The lane's vocabulary, shared by the scheduler (`tidal.dataplane.scheduler`) and its
drivers (the live groups, Ray, the simulator): the replica states and `LaneReplica`, a `Batch`
in flight, the actions `GroupScheduler.step` emits (`Dispatch`, `WakeAt`, `Expired`), what
`on_done` releases (`Finished`), and the lane's arrival-rate estimate (`ArrivalRate`).
Plain data and one counter: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from tidal.dataplane.request import QueuedRequest

STARTING, READY, DRAINING, SICK, DEAD, STOPPED = (
    "starting",
    "ready",
    "draining",
    "sick",
    "dead",
    "stopped",
)
BUSY = "busy"  # reported by `LaneReplica.status`: ready with work in flight

LatencyBC = Callable[[int, float], float]
"""l(b, c): predicted latency in seconds of one batch of b rows on c cores."""

INF = math.inf


class ArrivalRate:
    """The lane's arrival rate: requests offered in the previous whole clock second.

    `count(now)` once per offered request; `rate(now)` = the count of second floor(now) - 1
    (0 when that second saw nothing or is not the one just before the latest count).
    """

    __slots__ = ("_sec", "_cur", "_prev")

    def __init__(self) -> None:
        self._sec = -(1 << 62)
        self._cur = 0
        self._prev = 0

    def count(self, now: float) -> None:
        sec = math.floor(now)
        if sec != self._sec:
            self._prev = self._cur if sec == self._sec + 1 else 0
            self._sec, self._cur = sec, 0
        self._cur += 1

    def rate(self, now: float) -> float:
        sec = math.floor(now)
        if sec == self._sec:
            return float(self._prev)
        if sec == self._sec + 1:
            return float(self._cur)
        return 0.0


@dataclass(eq=False)
class LaneReplica:
    """One replica as the scheduler sees it. `cores`: the allocation for the next batch;
    `applied_cores`: what the executor runs with now (the driver resizes before a batch when
    they differ); `busy_until`: predicted end of the work in flight (clock seconds)."""

    id: int
    cores: float
    state: str = STARTING
    inflight: int = 0
    busy_until: float = 0.0
    applied_cores: float | None = None
    expected_ready: float = INF
    """When a starting replica is expected warm (the driver sets it from the last cold start):
    admission counts it when no replica is ready, so requests that can wait for a
    replacement wait (issue 13)."""

    @property
    def busy(self) -> bool:
        """True while a batch (or a driver operation such as a resize) is in flight."""
        return self.inflight > 0

    @property
    def status(self) -> str:
        """starting, ready, busy, draining, sick, dead or stopped."""
        return BUSY if self.state == READY and self.inflight else self.state


@dataclass(eq=False)
class Batch:
    """A batch in flight: `requests` on `replica`, started at `start`, predicted to end at
    `predicted_end` (what a watchdog compares with the clock); `cancelled` request ids."""

    id: int
    replica: LaneReplica
    requests: list[QueuedRequest]
    rows: int
    start: float
    predicted_end: float
    cancelled: set[int] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Run `batch.requests` on `batch.replica` now (resize to `cores` first if needed)."""

    batch: Batch

    @property
    def batch_id(self) -> int:
        return self.batch.id

    @property
    def replica(self) -> LaneReplica:
        return self.batch.replica

    @property
    def cores(self) -> float:
        return self.batch.replica.cores


@dataclass(frozen=True, slots=True)
class WakeAt:
    """Call `on_timer(t)` at clock time `t` (replaces the previous WakeAt of this lane)."""

    t: float


@dataclass(frozen=True, slots=True)
class Expired:
    """These queued requests passed their deadline (removed from the queue)."""

    requests: list[QueuedRequest]


Action = Dispatch | WakeAt | Expired


@dataclass(frozen=True, slots=True)
class Finished:
    """What `on_done` released: the requests whose answers are wanted (cancelled ones
    removed), the cancelled ids, and whether the replica should now be stopped (it was
    draining and is idle)."""

    batch: Batch
    requests: list[QueuedRequest]
    cancelled: tuple[int, ...]
    stop: bool


__all__ = [
    "BUSY",
    "DEAD",
    "DRAINING",
    "READY",
    "SICK",
    "STARTING",
    "STOPPED",
    "Action",
    "ArrivalRate",
    "Batch",
    "Dispatch",
    "Expired",
    "Finished",
    "LaneReplica",
    "LatencyBC",
    "WakeAt",
]
