"""One variant of one stage, live: its EDF queue, batcher loop and replicas.

Contracts:
- every request pushed gets exactly one answer on its future: a `StageResult`, or a `Refused`
  exception (504 expired, 502 worker died after `max_retries`, 500 worker error, 503 stopped);
- batches are taken from the EDF head (`tidal.dataplane.batcher.decide`) and sent to the free
  ready replica that finishes soonest (most cores); a replica runs one batch at a time;
- `reconcile(replicas, cores, batch)` is idempotent: it starts missing replicas (traffic only
  once warm), retires extras (no new batches, in-flight batch finishes, then stop), and resizes
  in place (applied before the replica's next batch, or at once when idle);
- a replica whose worker dies mid-batch is dropped and replaced; its requests go back to the
  queue (with their original deadlines) unless expired or out of retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from tidal.core.clock import Clock
from tidal.dataplane.batcher import decide_n
from tidal.dataplane.edf import EDFQueue
from tidal.dataplane.metrics import StageCounters
from tidal.dataplane.replica import (
    DEAD,
    DRAINING,
    READY,
    STARTING,
    STOPPED,
    ExecutorFactory,
    LiveRequest,
    Refused,
    Replica,
    StageResult,
)
from tidal.dataplane.worker import WorkerDied

log = logging.getLogger("tidal.dataplane")

PIPELINE_DEPTH = max(1, int(os.environ.get("TIDAL_PIPELINE_DEPTH", "1")))
"""Batches in flight per replica (env TIDAL_PIPELINE_DEPTH, default 1: one batch at a time;
A/B runs at 2 showed no gain within the noise of this shared machine). With depth 2 a second
batch is sent only when the first is predicted to end within PREFETCH_S: it then waits in the
worker's socket, which hides the dispatch round trip (IPC + process wake-up, 0.1-1 ms here)
for fast models without cutting the batches of slow ones (a ResNet batch is never pre-sent
40 ms ahead)."""
PREFETCH_S = 0.002
GAP_HOLD = os.environ.get("TIDAL_BATCH_GAP_HOLD", "1") == "1"
"""Anchor the hold window at the latest arrival or the latest batch completion, whichever is
later (wait while a burst keeps arriving, and give the clients just answered a moment to come
back), never past the slack or a full batch; off: anchor at the head's arrival."""
HOLD_FRACTION = float(os.environ.get("TIDAL_BATCH_HOLD_FRACTION", "0.1"))
"""The batcher's hold window is this fraction of l(1) (tidal.dataplane.batcher rule 4b); env
TIDAL_BATCH_HOLD_FRACTION. A/B at 0.5 for ResNet-18 at 8 connections: no clear gain here."""

LatencyBC = Callable[[int, float], float]


class VariantGroup:
    """Queue + replicas of one variant in one stage."""

    def __init__(
        self,
        stage: str,
        variant: str,
        *,
        clock: Clock,
        factory: ExecutorFactory,
        latency_s: LatencyBC,
        counters: StageCounters,
        serve_late: bool,
        max_retries: int,
        on_calibrate: Callable[[VariantGroup, Replica], None] | None = None,
    ) -> None:
        self.stage = stage
        self.variant = variant
        self.clock = clock
        self.factory = factory
        self.latency_s = latency_s
        self.counters = counters
        self.serve_late = serve_late
        self.max_retries = max_retries
        self.on_calibrate = on_calibrate
        self.queue = EDFQueue()
        self.replicas: list[Replica] = []
        self.target = 0
        self.cores = 1.0
        self.max_batch = 1
        self.rate = 0.0
        self.last_arrival = clock.now()
        self.last_free = self.last_arrival
        self._rate_n = 0
        self._rate_t0 = clock.now()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._next_id = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.replica_s = 0.0
        self.core_s = 0.0
        self._acct_t = clock.now()
        self.closed = False

    # ---------------------------------------------------------------- accounting
    def ready(self) -> list[Replica]:
        return [r for r in self.replicas if r.state == READY]

    def starting(self) -> int:
        return sum(1 for r in self.replicas if r.state == STARTING and not r.retire_when_started)

    def busy_until(self, now: float) -> list[float]:
        return [max(now, r.busy_until) if r.busy else now for r in self.ready()]

    def account(self, now: float) -> None:
        """Integrate replica-seconds and core-seconds of ready replicas up to `now`."""
        dt = now - self._acct_t
        if dt > 0:
            ready = self.ready()
            self.replica_s += dt * len(ready)
            self.core_s += dt * sum(r.cores for r in ready)
        self._acct_t = now

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- requests
    def push(self, req: LiveRequest) -> None:
        """Queue `req` (already admitted) and let the batcher look at it."""
        now = req.stage_arrival
        self._rate_n += 1
        self.last_arrival = now
        span = now - self._rate_t0
        if span >= 0.2:
            self.rate = 0.5 * self.rate + 0.5 * self._rate_n / span
            self._rate_n = 0
            self._rate_t0 = now
        self.queue.push(req)
        self.pump()

    def _answer_error(self, req: Any, err: Refused) -> None:
        if req.fut is not None and not req.fut.done():
            req.fut.set_exception(err)

    def pump(self) -> None:
        """Expire, then dispatch every batch the batcher wants now; arm a timer otherwise."""
        if self.closed:
            return
        now = self.clock.now()
        q = self.queue
        if not self.serve_late and q:
            for req in q.expire(now):
                self.counters.violations["expired"] += 1
                self._answer_error(
                    req,
                    Refused(
                        504,
                        "expired",
                        f"deadline passed while queued at stage {self.stage!r} "
                        f"({(now - req.deadline) * 1e3:.1f} ms ago)",
                    ),
                )
        while q:
            rep = self._free_replica()
            if rep is None:
                break
            n_ready = max(1, len(self.ready()))
            lat = _bind(self.latency_s, rep.cores)
            head = q.peek()
            assert head is not None
            # Hold anchored at the latest arrival: wait while a burst is still coming in.
            dec = decide_n(
                len(q),
                head.deadline,
                now,
                self.max_batch,
                lat,
                self.rate / n_ready,
                HOLD_FRACTION * lat(1),
                max(head.arrival, self.last_arrival, self.last_free) if GAP_HOLD else head.arrival,
            )
            if dec is None:
                break
            if dec.dispatch_at > now:
                self._arm(dec.dispatch_at, now)
                break
            batch: list[Any] = q.pop_batch(dec.size)
            self._begin(rep, now)
            self.counters.in_flight += len(batch)
            rows = sum(int(r.x.shape[0]) for r in batch)  # predicted on rows, not requests
            rep.busy_until = max(now, rep.busy_until) + self.latency_s(rows, rep.cores)
            self._spawn(self._run_batch(rep, batch))
        if q and not self.serve_late:
            head = q.peek()
            if head is not None:
                self._arm(head.deadline, now)

    def _arm(self, at: float, now: float) -> None:
        if self._timer is not None and self._timer_at <= at and not self._timer.cancelled():
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_later(max(0.0, at - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self.pump()

    def _free_replica(self) -> Replica | None:
        """An idle ready replica (most cores first), else one about to finish (pipelining)."""
        best: Replica | None = None
        soon: Replica | None = None
        now = -1.0
        for r in self.replicas:
            if r.state != READY:
                continue
            if r.inflight == 0:
                if best is None or r.cores > best.cores:
                    best = r
            elif r.inflight < PIPELINE_DEPTH and r.applied_cores == r.cores:
                if now < 0:
                    now = self.clock.now()
                if r.busy_until - now <= PREFETCH_S and (
                    soon is None or r.busy_until < soon.busy_until
                ):
                    soon = r
        return best or soon

    def _begin(self, rep: Replica, now: float) -> None:
        if rep.inflight == 0:
            rep.busy_since = now
        rep.inflight += 1

    def _end(self, rep: Replica, now: float) -> None:
        rep.inflight = max(0, rep.inflight - 1)
        if rep.inflight == 0:
            self.counters.busy_s += now - rep.busy_since
            self.counters.busy_core_s += (now - rep.busy_since) * rep.cores
            rep.busy_until = now

    async def _run_batch(self, rep: Replica, batch: list[LiveRequest]) -> None:
        try:
            await self._run_batch_inner(rep, batch)
        finally:
            self.counters.in_flight -= len(batch)

    async def _run_batch_inner(self, rep: Replica, batch: list[LiveRequest]) -> None:
        ex = rep.executor
        assert ex is not None
        t0 = self.clock.now()
        try:
            if rep.applied_cores != rep.cores:
                await self._resize(rep)
            x = batch[0].x if len(batch) == 1 else np.concatenate([r.x for r in batch])
            y = await ex.infer_async(x)
        except WorkerDied as e:
            self._on_death(rep, batch, str(e))
            return
        except Exception as e:  # WorkerError or a bug: answer, keep serving
            log.warning("stage %s: batch failed on replica %s: %s", self.stage, rep.id, e)
            for req in batch:
                self.counters.violations["error"] += 1
                self._answer_error(req, Refused(500, "error", f"inference failed: {e}"))
            self._finish(rep, t0)
            return
        now = self.clock.now()
        c = self.counters
        c.batch.observe(len(batch))
        offset = 0
        rows = int(x.shape[0])
        for req in batch:
            n = int(req.x.shape[0])
            out = y if len(batch) == 1 else y[offset : offset + n]
            offset += n
            if req.fut is not None and not req.fut.done():
                req.fut.set_result(
                    StageResult(out, self.variant, rows, t0 - req.stage_arrival, now)
                )
        self._finish(rep, t0)

    def _finish(self, rep: Replica, t0: float) -> None:
        now = self.clock.now()
        self._end(rep, now)
        self.last_free = now
        if rep.state == DRAINING and rep.inflight == 0:
            self._stop(rep)
        elif not self.queue and len(self.replicas) > self.target:
            self._ensure_target()
        self.pump()

    async def _resize(self, rep: Replica) -> None:
        ex = rep.executor
        assert ex is not None
        target = rep.cores
        dur = await asyncio.to_thread(ex.resize, target)
        rep.applied_cores = target
        self.counters.resize.observe(float(dur))

    async def _resize_idle(self, rep: Replica) -> None:
        self._begin(rep, self.clock.now())
        try:
            await self._resize(rep)
        except WorkerDied as e:
            self._on_death(rep, [], str(e))
            return
        except Exception as e:
            log.warning("resize of replica %s failed: %s", rep.id, e)
        self._end(rep, self.clock.now())
        if rep.state == DRAINING and rep.inflight == 0:
            self._stop(rep)
        self.pump()

    def _on_death(self, rep: Replica, batch: list[LiveRequest], why: str) -> None:
        now = self.clock.now()
        first = rep.state != DEAD  # several in-flight batches report the same death
        self._end(rep, now)
        if first:
            self.account(now)
            self.counters.replica_deaths += 1
            rep.state = DEAD
            if rep in self.replicas:
                self.replicas.remove(rep)
            if rep.executor is not None:
                self._spawn(asyncio.to_thread(_quiet_stop, rep.executor))
            log.warning("stage %s: replica %s (pid %s) died: %s", self.stage, rep.id, rep.pid, why)
        for req in batch:
            if self.closed:
                self._answer_error(req, Refused(503, "refused", "server shutting down"))
            elif req.retries < self.max_retries and (self.serve_late or req.deadline > now):
                req.retries += 1
                self.queue.push(req)
            else:
                self.counters.violations["error"] += 1
                self._answer_error(
                    req,
                    Refused(502, "error", f"worker of {self.variant!r} died mid-batch: {why}"),
                )
        if first:
            self._ensure_target()
        self.pump()

    # ---------------------------------------------------------------- scaling
    def reconcile(self, replicas: int, cores: float, batch: int) -> list[asyncio.Task[None]]:
        """Move towards `replicas` x `cores` at max batch `batch`; return the start tasks."""
        self.account(self.clock.now())
        self.target = replicas
        self.max_batch = batch
        if cores != self.cores:
            self.cores = cores
            for r in self.replicas:
                if r.state in (READY, STARTING):
                    r.cores = cores
                    if r.state == READY and not r.busy:
                        self._spawn(self._resize_idle(r))
        tasks = self._ensure_target()
        self.pump()
        return tasks

    def _ensure_target(self) -> list[asyncio.Task[None]]:
        active = [r for r in self.replicas if r.state in (READY, STARTING)]
        live = [r for r in active if not r.retire_when_started]
        tasks: list[asyncio.Task[None]] = []
        # Un-retire replicas still starting before starting new ones.
        for r in active:
            if len(live) >= self.target:
                break
            if r.retire_when_started:
                r.retire_when_started = False
                live.append(r)
        while len(live) < self.target and not self.closed:
            self._next_id += 1
            rep = Replica(self._next_id, self.variant, self.cores)
            self.replicas.append(rep)
            rep.starter = asyncio.get_running_loop().create_task(self._start(rep))
            tasks.append(rep.starter)
            live.append(rep)
        # Keep one replica while requests are still queued for this variant (zero lost).
        extra = len(live) - max(self.target, 1 if self.queue else 0)
        if extra > 0:
            # Retire: starting ones first, then idle ready ones, then busy ones.
            order = sorted(
                live,
                key=lambda r: (r.state != STARTING, r.busy, -r.id),
            )
            for r in order[:extra]:
                if r.state == STARTING:
                    r.retire_when_started = True
                elif r.busy:
                    self.account(self.clock.now())
                    r.state = DRAINING
                else:
                    self._stop(r)
        return tasks

    async def _start(self, rep: Replica) -> None:
        t0 = self.clock.now()
        start_cores = rep.cores
        try:
            ex = await asyncio.to_thread(self.factory, self.variant, start_cores)
        except Exception as e:
            log.error("stage %s: starting %s failed: %s", self.stage, self.variant, e)
            rep.state = DEAD
            if rep in self.replicas:
                self.replicas.remove(rep)
            return
        rep.executor = ex
        rep.applied_cores = start_cores
        if self.on_calibrate is not None:
            try:
                await asyncio.to_thread(self.on_calibrate, self, rep)
            except Exception as e:  # calibration is best effort; keep the prior profile
                log.warning("calibration of %s failed: %s", self.variant, e)
        cold = float(getattr(ex, "cold_start_s", self.clock.now() - t0))
        self.counters.cold_start.observe(cold)
        if rep.retire_when_started or self.closed:
            rep.state = STOPPED
            if rep in self.replicas:
                self.replicas.remove(rep)
            await asyncio.to_thread(_quiet_stop, ex)
            return
        now = self.clock.now()
        self.account(now)
        rep.state = READY
        rep.ready_at = now
        rep.busy_until = now
        if rep.applied_cores != rep.cores:
            self._spawn(self._resize_idle(rep))
        self.pump()

    def _stop(self, rep: Replica) -> None:
        self.account(self.clock.now())
        rep.state = STOPPED
        if rep in self.replicas:
            self.replicas.remove(rep)
        if rep.executor is not None:
            self._spawn(asyncio.to_thread(_quiet_stop, rep.executor))

    def idle(self) -> bool:
        """No queued request and no batch in flight."""
        return not self.queue and not any(r.busy for r in self.replicas)

    async def close(self) -> None:
        """Answer queued requests 503, stop every replica, wait for the stops."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        for req in self.queue.drain():
            self._answer_error(req, Refused(503, "refused", "server shutting down"))
        for r in list(self.replicas):
            if r.starter is not None and not r.starter.done():
                with contextlib.suppress(BaseException):
                    await r.starter
        if self._tasks:  # let in-flight batches finish (bounded)
            await asyncio.wait(list(self._tasks), timeout=10.0)
        for r in list(self.replicas):
            self._stop(r)
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _bind(lat: LatencyBC, cores: float) -> Callable[[int], float]:
    return lambda b: lat(b, cores)


def _quiet_stop(ex: object) -> None:
    with contextlib.suppress(Exception):
        ex.stop()  # type: ignore[attr-defined]
