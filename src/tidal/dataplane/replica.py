"""Replicas and the requests they serve in the live data plane.

A replica wraps one executor: in production a worker process (`tidal.dataplane.worker`), in
unit tests any object with the same contract (`Executor`). The data plane never runs two
operations at once on one executor: at most one batch or one resize is in flight per replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tidal.core.request import Request

STARTING, READY, DRAINING, STOPPED, DEAD = "starting", "ready", "draining", "stopped", "dead"


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


class Refused(Exception):
    """A request answered without a result: HTTP `status`, violation `cause`, `reason`."""

    def __init__(
        self, status: int, cause: str, reason: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.cause = cause
        self.reason = reason
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class StageResult:
    """One request's output rows from one stage, and how it was served."""

    output: np.ndarray
    variant: str
    batch_size: int
    queue_s: float
    finish: float


@dataclass(slots=True, eq=False)
class LiveRequest(Request):
    """A request inside one stage: input rows `x` (shape (n, *input)), its answer future."""

    x: Any = None
    fut: asyncio.Future[StageResult] | None = None
    stage_arrival: float = 0.0
    retries: int = 0


@dataclass(eq=False)
class Replica:
    """One replica of a variant. `cores` is the allocation in force for the next batch."""

    id: int
    variant: str
    cores: float
    state: str = STARTING
    executor: Executor | None = None
    inflight: int = 0
    busy_since: float = 0.0
    busy_until: float = 0.0
    applied_cores: float | None = None
    ready_at: float = 0.0
    retire_when_started: bool = False
    starter: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def busy(self) -> bool:
        """True while a batch (or a resize) is in flight on this replica."""
        return self.inflight > 0

    @property
    def pid(self) -> int | None:
        return self.executor.pid if self.executor is not None else None
