"""The idle-replica liveness probe (tidal.dataplane.watchdog `check_idle`, driven by the
lane's `LaneWatchdog` in tidal.dataplane.group): a ready replica whose worker is stopped
while it holds no batch is found, killed and replaced without any request being sent to it;
a replica running a long batch that makes progress is left alone. The gateway runs on a
SimClock with ManualTimers (scripted order, no sleeps); the executors are the in-process fakes
with a scripted /proc state (`progress()`), as `WorkerHandle.progress()` reports it."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import numpy as np
from dataplane_fakes import FakeExecutor, FakeFactory
from test_dataplane_gateway import _gw, advance, finish

from tidal.dataplane.watchdog import IDLE, Watchdog, WatchdogConfig

CFG = WatchdogConfig(factor=3.0, grace_s=0.5, stall_s=0.75)


class ProbedExecutor(FakeExecutor):
    """A fake whose process state is scripted: `stopped` -> "T", else "S" idle / "R" busy."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.stopped = False
        self.running = False
        self._ticks = itertools.count()

    def progress(self) -> tuple[str, int] | None:
        if not self.alive():
            return None
        if self.stopped:
            return ("T", 0)
        return ("R", next(self._ticks)) if self.running else ("S", 0)

    async def infer_async(self, batch: np.ndarray) -> np.ndarray:
        self.running = True
        try:
            return await super().infer_async(batch)
        finally:
            self.running = False


class ProbedFactory(FakeFactory):
    def __call__(self, variant: str, cores: float) -> ProbedExecutor:
        ex = ProbedExecutor(variant, cores, self.base, self.per_item, self.timers)
        self.started.append(ex)
        return ex


def _x() -> np.ndarray:
    return np.zeros((1, 64), dtype=np.float32)


def test_stopped_idle_replica_is_found_after_stall_s_of_stopped_probes() -> None:
    w = Watchdog(CFG)
    stopped = lambda pid: ("T", 7)  # noqa: E731
    found: list[float] = []
    for i in range(15):
        t = i / 10
        found += [t for _ in w.check_idle(t, {3: 42}, stopped)]
    assert found == [0.8]  # first seen stopped at 0.0, + stall 0.75 -> the probe at 0.8
    # a stop that ends (SIGCONT) before stall_s is forgotten
    w2 = Watchdog(CFG)
    assert w2.check_idle(0.0, {3: 42}, stopped) == []
    assert w2.check_idle(0.5, {3: 42}, lambda pid: ("S", 7)) == []
    assert w2.check_idle(0.6, {3: 42}, stopped) == []
    assert w2.check_idle(1.3, {3: 42}, stopped) == []  # 0.7 s since it stopped again
    (s,) = w2.check_idle(1.4, {3: 42}, stopped)
    assert (s.batch_id, s.replica, s.pid) == (IDLE, 3, 42) and "stopped (state T)" in s.reason


def test_idle_probe_skips_a_replica_holding_a_watched_batch() -> None:
    w = Watchdog(CFG)
    w.watch(1, replica=3, pid=42, start=0.0, predicted_end=5.0, deadline=100.0)
    stopped = lambda pid: ("T", 7)  # noqa: E731
    assert all(w.check_idle(i / 10, {3: 42}, stopped) == [] for i in range(30))
    assert w.check_idle(3.0, {3: 42, 4: 43}, lambda pid: None) == []  # gone: death path's


def test_sigstopped_idle_replica_is_replaced_without_a_request() -> None:
    fac = ProbedFactory(base=0.01, per_item=0.0)

    async def main() -> None:
        gw = _gw(fac, batch=1)
        await gw.start()
        await advance(fac, 0.5)
        victim = fac.started[0]
        victim.stopped = True  # SIGSTOP while idle: no batch will ever be late
        await advance(fac, 1.0)  # stall 0.75 s + two probe periods
        snap = gw.metrics_snapshot()["m"]
        assert snap.watchdog_kills == 1 and snap.replica_deaths == 1, snap
        assert victim._dead and len(fac.started) == 2
        # the replacement serves, the stopped worker got nothing
        (y,) = await finish(fac, gw.infer("m", _x(), 5000))
        assert victim.batches == [] and fac.started[1].batches == [1]
        await gw.stop()

    asyncio.run(main())


def test_a_long_batch_making_progress_is_not_killed_by_the_idle_probe() -> None:
    fac = ProbedFactory(base=2.0, per_item=0.0)  # a 2 s batch, within its prediction

    async def main() -> None:
        gw = _gw(fac, batch=1)
        await gw.start()
        await advance(fac, 0.5)
        fut = asyncio.ensure_future(gw.infer("m", _x(), 60_000))
        await advance(fac, 1.9)  # well past stall_s, running, CPU ticks moving
        snap = gw.metrics_snapshot()["m"]
        assert snap.watchdog_kills == 0 and len(fac.started) == 1
        await finish(fac, fut)
        await advance(fac, 1.0)  # idle again, sleeping on its socket: left alone
        snap = gw.metrics_snapshot()["m"]
        assert snap.watchdog_kills == 0 and snap.replica_deaths == 0 and len(fac.started) == 1
        await gw.stop()

    asyncio.run(main())


def test_a_batch_waiting_on_its_replicas_resize_is_not_overdue() -> None:
    """A resize that waits (on Ray a growth can wait seconds for room) runs before the
    replica's next batch; that wait is not the worker's batch, so the watchdog does not count
    it: no kill though the batch reaches the worker 3 s after its dispatch (measured: killed
    as overdue before, each kill a cold start)."""
    from tidal.core import Plan

    fac = ProbedFactory(base=0.5, per_item=0.0)

    async def slow_offload(fn: Any, *args: Any) -> Any:
        if getattr(fn, "__name__", "") == "resize":
            assert fac.timers is not None
            await fac.timers.sleep(3.0)  # 3 s on the scripted clock: waiting for room
        return fn(*args)

    async def main() -> None:
        gw = _gw(fac, batch=1)
        await gw.start()
        gw.stages["m"].groups["digits-mlp"].offload = slow_offload
        await advance(fac, 0.5)
        first = asyncio.ensure_future(gw.infer("m", _x(), 60_000))
        await advance(fac, 0.1)  # the first batch runs
        plan = Plan.single("m", "digits-mlp", replicas=1, cores=2.0, batch=1)
        applied = asyncio.ensure_future(gw.apply_plan(plan))
        await advance(fac, 0.05)
        second = asyncio.ensure_future(gw.infer("m", _x(), 60_000))
        await advance(fac, 2.0)  # the first ended; the second's batch waits on the resize
        assert fac.started[0].batches == [1] and fac.started[0].resizes == []
        await finish(fac, first, second, applied)
        snap = gw.metrics_snapshot()["m"]
        assert snap.watchdog_kills == 0 and len(fac.started) == 1, snap
        assert fac.started[0].resizes == [2.0] and fac.started[0].batches == [1, 1]
        await gw.stop()

    asyncio.run(main())
