"""An in-process executor with the worker's contract, for fast unit tests of the data plane.

It is NOT used by integration tests (those start real worker processes). A batch takes
`base + per_item * b / cores` seconds: on the scripted clock when the factory has `timers`
(`tidal.dataplane.timers.ManualTimers`, the unit tests' default: ordering never depends on
this machine's speed), else on the event loop; `kill()` makes the in-flight and later batches
fail with the real `WorkerDied`.
"""

from __future__ import annotations

import asyncio
import itertools

import numpy as np

from tidal.core.profile import LatencyFit
from tidal.dataplane.timers import ManualTimers
from tidal.dataplane.worker import WorkerDied

_pids = itertools.count(10_000)


class FakeExecutor:
    def __init__(
        self,
        variant: str,
        cores: float,
        base: float = 0.002,
        per_item: float = 0.001,
        timers: ManualTimers | None = None,
    ):
        self.variant = variant
        self.cores = cores
        self.pid = next(_pids)
        self.cold_start_s = 0.0
        self.base = base
        self.per_item = per_item
        self.batches: list[int] = []
        self.resizes: list[float] = []
        self.seen: list[np.ndarray] = []
        self._dead = False
        self._stopped = False
        self._inflight: asyncio.Future[None] | None = None
        self.timers = timers

    async def infer_async(self, batch: np.ndarray) -> np.ndarray:
        if self._dead or self._stopped:
            raise WorkerDied(f"fake worker {self.pid} is gone")
        self.batches.append(int(batch.shape[0]))
        self.seen.append(batch.copy())
        delay = self.base + self.per_item * batch.shape[0] / self.cores
        if self.timers is not None:
            fut = self.timers.sleep(delay)
            self._inflight = fut
            await fut
        else:
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            self._inflight = fut
            handle = loop.call_later(delay, _settle, fut)
            try:
                await fut
            finally:
                handle.cancel()
        if self._dead:
            raise WorkerDied(f"fake worker {self.pid} was killed mid-batch")
        return batch.astype(np.float32) * 2.0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return batch.astype(np.float32) * 2.0

    def kill(self) -> None:
        self._dead = True
        if self._inflight is not None and not self._inflight.done():
            self._inflight.set_result(None)

    def resize(self, cores: float) -> float:
        if self._dead:
            raise WorkerDied("dead")
        self.cores = cores
        self.resizes.append(cores)
        return 0.0

    def stop(self) -> None:
        self._stopped = True

    def alive(self) -> bool:
        return not (self._dead or self._stopped)


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class FakeFactory:
    """Records every executor it started. `fit()` is the matching latency profile."""

    def __init__(
        self, base: float = 0.002, per_item: float = 0.001, timers: ManualTimers | None = None
    ) -> None:
        self.base = base
        self.per_item = per_item
        self.timers = timers
        self.started: list[FakeExecutor] = []

    def __call__(self, variant: str, cores: float) -> FakeExecutor:
        ex = FakeExecutor(variant, cores, self.base, self.per_item, self.timers)
        self.started.append(ex)
        return ex

    def fit(self) -> LatencyFit:
        return LatencyFit(gamma=self.per_item * 1e3, delta=0.0, epsilon=0.0, eta=self.base * 1e3)
