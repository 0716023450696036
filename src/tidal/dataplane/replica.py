"""Replicas and the requests they serve in the live data plane.

A replica wraps one executor: in production a worker process (`tidal.dataplane.worker`), in
unit tests any object with the same contract (`Executor`). The data plane never runs two
operations at once on one executor: at most one batch or one resize is in flight per replica
(unless `SchedulerConfig.pipeline_depth` > 1). The replica states are the scheduler's
(`tidal.dataplane.scheduler`): one set for live, Ray and the simulator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tidal.dataplane.request import QueuedRequest, Refused
from tidal.dataplane.scheduler import (
    DEAD,
    DRAINING,
    READY,
    SICK,
    STARTING,
    STOPPED,
    LaneReplica,
)

__all__ = [
    "DEAD",
    "DRAINING",
    "READY",
    "SICK",
    "STARTING",
    "STOPPED",
    "Executor",
    "ExecutorFactory",
    "LiveRequest",
    "Refused",
    "Replica",
    "StageResult",
]


class Executor(Protocol):
    """What a replica needs from a worker (the foundation's `WorkerHandle` satisfies it)."""

    pid: int
    cold_start_s: float

    async def infer_async(self, batch: np.ndarray) -> np.ndarray: ...

    def resize(self, cores: float) -> float: ...

    def stop(self) -> None: ...

    def alive(self) -> bool: ...


ExecutorFactory = Callable[[str, float], Executor]
"""Start a warm executor of `variant` on `cores` cores (blocking; run in a thread)."""


@dataclass(slots=True)
class StageResult:
    """One request's output rows from one stage, and how it was served."""

    output: np.ndarray
    variant: str
    batch_size: int
    queue_s: float
    finish: float


@dataclass(slots=True, eq=False)
class LiveRequest(QueuedRequest):
    """A request inside one stage: input rows `x` (shape (n, *input)), its answer future."""

    x: Any = None
    fut: asyncio.Future[StageResult] | None = None


@dataclass(eq=False)
class Replica(LaneReplica):
    """One live replica: the scheduler's `LaneReplica` (state, cores, in-flight count,
    predicted busy-until) plus the executor and its lifecycle. `cores` is the allocation in
    force for the next batch."""

    variant: str = ""
    executor: Executor | None = None
    busy_since: float = 0.0
    ready_at: float = 0.0
    retire_when_started: bool = False
    starter: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.executor.pid if self.executor is not None else None
