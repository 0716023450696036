"""One variant of one stage, live: the asyncio driver of its `GroupScheduler`.

The scheduler (`tidal.dataplane.scheduler`) decides (queue, admission, batching, hold,
pipelining, rate, replica states); this module executes: it runs batches on executors, arms
the lane's one timer on the injected clock (`tidal.dataplane.timers`), starts, resizes and
stops worker processes, and answers futures.

Contracts:
- every request pushed gets exactly one answer on its future: a `StageResult`, or a `Refused`
  exception (504 expired, 502 worker died after `max_retries`, 500 worker error, 503 stopped);
  a request cancelled by its client (`cancel`) gets none;
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
from collections.abc import Callable
from typing import Any

import numpy as np

from tidal.core.clock import Clock
from tidal.dataplane.metrics import StageCounters
from tidal.dataplane.replica import (
    DEAD,
    READY,
    STARTING,
    STOPPED,
    ExecutorFactory,
    LiveRequest,
    Replica,
    StageResult,
)
from tidal.dataplane.request import Admitted, QueuedRequest, Refused
from tidal.dataplane.scheduler import (
    Action,
    Batch,
    Dispatch,
    Expired,
    Finished,
    GroupScheduler,
    SchedulerConfig,
    WakeAt,
)
from tidal.dataplane.timers import LoopTimers, Offload, TimerHandle, Timers
from tidal.dataplane.watchdog import IDLE, LAG_SLACK_S, LaneWatchdog, Sick, WatchdogConfig
from tidal.dataplane.worker import WorkerDied

log = logging.getLogger("tidal.dataplane")

LIVENESS_S = 1.0
"""Period of the liveness sweep over idle replicas (seconds of the injected clock)."""

LatencyBC = Callable[[int, float], float]


class VariantGroup:
    """Queue + replicas of one variant in one stage (driver of one GroupScheduler)."""

    def __init__(
        self,
        stage: str,
        variant: str,
        *,
        clock: Clock,
        factory: ExecutorFactory,
        latency_s: LatencyBC,
        counters: StageCounters,
        config: SchedulerConfig,
        on_calibrate: Callable[[VariantGroup, Replica], None] | None = None,
        timers: Timers | None = None,
        offload: Offload | None = None,
        watchdog: WatchdogConfig | None = None,
    ) -> None:
        self.stage = stage
        self.variant = variant
        self.clock = clock
        self.factory = factory
        self.latency_s = latency_s
        self.counters = counters
        self.on_calibrate = on_calibrate
        self.sched = GroupScheduler(latency_s, config, name=f"{stage}/{variant}")
        self.timers: Timers = timers or LoopTimers(clock)
        self.offload: Offload = offload or asyncio.to_thread
        self.replicas: list[Replica] = []
        self.target = 0
        self.cores = 1.0
        self._timer: TimerHandle | None = None
        self._pump_soon = False
        self._coalesce = timers is None  # the live loop's timers (see `push`)
        self._sweep: TimerHandle | None = None
        self._next_id = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.replica_s = 0.0
        self.core_s = 0.0
        self._acct_t = clock.now()
        self.closed = False
        # Issue 13: the batch watchdog (overdue or stalled batch, or a stopped idle worker ->
        # replica sick, killed and replaced) and the cold-start estimate that lets requests
        # wait for a replacement.
        self.watchdog = LaneWatchdog(
            watchdog or WatchdogConfig(), clock, self.timers, self._on_sick, self._idle_ready
        )
        self._cold_est: float | None = None
        self._replacing = False

    @property
    def queue(self) -> Any:
        """The lane's EDF queue (owned by the scheduler)."""
        return self.sched.queue

    @property
    def max_batch(self) -> int:
        return self.sched.max_batch

    # ---------------------------------------------------------------- accounting
    def ready(self) -> list[Replica]:
        return [r for r in self.replicas if r.state == READY]

    def _idle_ready(self) -> list[tuple[int, Any]]:
        """(id, executor) of the ready replicas with nothing in flight (the idle probe's)."""
        return [
            (r.id, r.executor)
            for r in self.replicas
            if r.state == READY and not r.busy and r.executor is not None
        ]

    def starting(self) -> int:
        return sum(1 for r in self.replicas if r.state == STARTING and not r.retire_when_started)

    def account(self, now: float) -> None:
        """Integrate replica-seconds and core-seconds held up to `now`: ready replicas and
        starting ones (a starting worker holds its cores while it loads, as a simulated
        replica does, `tidal.sim.actuator`; call this before any change of the set)."""
        dt = now - self._acct_t
        if dt > 0:
            held = [r for r in self.replicas if r.state in (READY, STARTING)]
            self.replica_s += dt * len(held)
            self.core_s += dt * sum(r.cores for r in held)
        self._acct_t = now

    def _busy_end(self, rep: Replica, now: float) -> None:
        if rep.inflight == 0:
            self.counters.busy_s += now - rep.busy_since
            self.counters.busy_core_s += (now - rep.busy_since) * rep.cores

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---------------------------------------------------------------- requests
    def push(self, req: LiveRequest, now: float) -> Admitted | Refused:
        """Offer `req` to the scheduler at `now` (admission unless serving late); the
        verdict is returned at once (a `Refused` is returned, not raised). The dispatch
        decision runs once per event-loop iteration, after every arrival of that iteration
        (call_soon): requests that arrive together ride one batch, and the decision is paid
        once per burst instead of once per request (measured, issue 14: noop at 16
        connections +17% req/s, gateway CPU per request -14%). With injected timers (a
        simulated clock: tests, parity with the simulator) every arrival is decided at once,
        in the simulator's event order."""
        v = self.sched.push(req, now)
        if not self._coalesce:
            self.pump()
        elif not self._pump_soon:  # one decision per loop iteration's arrivals (one batch)
            self._pump_soon = True
            asyncio.get_running_loop().call_soon(self._pump_deferred)
        return v

    def _pump_deferred(self) -> None:
        self._pump_soon = False
        self.pump()

    def cancel(self, rid: int) -> None:
        """The client of `rid` went away: drop it from the queue or its batch's answers."""
        if self.sched.cancel(rid) is not None:
            self.counters.cancelled += 1

    def pump(self) -> None:
        """Ask the scheduler what to do now and do it."""
        if self.closed:
            return
        now = self.clock.now()
        self._execute(self.sched.step(now), now)

    def _arm_sweep(self) -> None:
        if self._sweep is None and not self.closed and self.replicas:
            t = self.clock.now() + LIVENESS_S
            self._sweep = self.timers.call_at(t, self._liveness)

    def _liveness(self) -> None:
        """Once a second while the lane has replicas: an idle ready replica whose executor
        is no longer alive (worker exited, Ray node gone) takes the death path and is
        replaced; busy ones are noticed by their batch (or the watchdog)."""
        self._sweep = None
        if self.closed:
            return
        for r in list(self.replicas):
            ex = r.executor
            if r.state == READY and not r.busy and ex is not None:
                try:
                    alive = bool(ex.alive())
                except Exception:  # a probe that fails counts as dead
                    alive = False
                if not alive:
                    self._on_death(r, "executor not alive (liveness sweep)")
        self._arm_sweep()

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self.clock.now()
        self._execute(self.sched.on_timer(now), now)

    def _execute(self, actions: list[Action], now: float) -> None:
        for a in actions:
            if isinstance(a, Dispatch):
                b = a.batch
                rep = b.replica
                assert isinstance(rep, Replica)
                if rep.inflight == 1:
                    rep.busy_since = now
                self.counters.in_flight += len(b.requests)
                due = min((r.deadline for r in b.requests), default=b.predicted_end)
                self.watchdog.on_dispatch(b.id, rep.id, rep.executor, now, b.predicted_end, due)
                self._spawn(self._run_batch(rep, b, now))
            elif isinstance(a, Expired):
                for req in a.requests:
                    self.counters.violations["expired"] += 1
                    why = (
                        f"deadline passed while queued at stage {self.stage!r} "
                        f"({(now - req.deadline) * 1e3:.1f} ms ago)"
                        if now >= req.deadline
                        else f"cannot finish by its deadline at stage {self.stage!r} "
                        f"({(req.deadline - now) * 1e3:.1f} ms left, less than its service)"
                    )
                    _answer_error(req, Refused(504, "expired", why))
            elif isinstance(a, WakeAt):
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = self.timers.call_at(a.t, self._on_timer)

    async def _run_batch(self, rep: Replica, b: Batch, dispatched: float) -> None:
        try:
            await self._run_batch_inner(rep, b, dispatched)
        finally:
            self.watchdog.on_end(b.id)
            self.counters.in_flight -= len(b.requests)

    async def _run_batch_inner(self, rep: Replica, b: Batch, dispatched: float) -> None:
        ex = rep.executor
        assert ex is not None
        batch: list[LiveRequest] = b.requests  # type: ignore[assignment]
        t0 = self.clock.now()
        try:
            resized = rep.applied_cores != rep.cores
            if resized:
                # The resize is not the worker's batch: unwatched while it runs (a Ray growth
                # can wait seconds for room; killed as "overdue" meanwhile, measured).
                self.watchdog.on_end(b.id)
                await self._resize_or_keep(rep)
            t1 = self.clock.now()
            if resized or t1 - dispatched > LAG_SLACK_S:
                # Watched afresh from when the batch goes to the worker (after a resize, or
                # a task that started late on a lagging loop), with its predicted latency and
                # a deadline no earlier than that.
                end = t1 + max(0.0, b.predicted_end - dispatched)
                due = max(min((r.deadline for r in batch), default=end), end)
                self.watchdog.on_dispatch(b.id, rep.id, ex, t1, end, due)
            x = batch[0].x if len(batch) == 1 else np.concatenate([r.x for r in batch])
            y = await ex.infer_async(x)
        except WorkerDied as e:
            self._on_death(rep, str(e))
            return
        except Exception as e:  # WorkerError or a bug: answer, keep serving
            log.warning("stage %s: batch failed on replica %s: %s", self.stage, rep.id, e)
            fin = self.sched.on_done(b.id, self.clock.now())
            if fin is not None:
                for req in fin.requests:
                    self.counters.violations["error"] += 1
                    _answer_error(req, Refused(500, "error", f"inference failed: {e}"))
                self._after(rep, fin)
            return
        now = self.clock.now()
        fin = self.sched.on_done(b.id, now)
        if fin is None:  # resolved by the replica's death (another batch reported it)
            return
        c = self.counters
        c.batch.observe(len(batch))
        offset = 0
        rows = int(x.shape[0])
        dropped = set(fin.cancelled)
        for req in batch:
            n = int(req.x.shape[0])
            out = y if len(batch) == 1 else y[offset : offset + n]
            offset += n
            if req.id in dropped:
                continue
            if req.fut is not None and not req.fut.done():
                req.fut.set_result(
                    StageResult(out, self.variant, rows, t0 - req.stage_arrival, now)
                )
        self._after(rep, fin)

    def _after(self, rep: Replica, fin: Finished) -> None:
        now = self.clock.now()
        self._busy_end(rep, now)
        if fin.stop:
            self._stop(rep)
        elif not self.sched.queue and len(self.replicas) > self.target:
            self._ensure_target()
        self.pump()

    async def _resize(self, rep: Replica) -> None:
        ex = rep.executor
        assert ex is not None
        target = rep.cores
        dur = await self.offload(ex.resize, target)
        self.sched.on_resized(rep.id, target)
        self.counters.resize.observe(float(dur))

    async def _resize_or_keep(self, rep: Replica) -> None:
        """Resize before a batch; a refused resize (e.g. Ray has no free CPU on the node)
        keeps the replica at its size and the batch runs (WorkerDied still propagates)."""
        try:
            await self._resize(rep)
        except WorkerDied:
            raise
        except Exception as e:
            self._resize_refused(rep, e)

    def _resize_refused(self, rep: Replica, e: Exception) -> None:
        log.warning(
            "stage %s: resize of replica %s to %s cores refused, size unchanged (%s cores): %s",
            self.stage,
            rep.id,
            rep.cores,
            rep.applied_cores,
            e,
        )
        if rep.applied_cores is not None and rep.id in self.sched.replicas:
            self.sched.set_cores(rep.id, rep.applied_cores)  # (it may have died meanwhile)

    async def _resize_idle(self, rep: Replica) -> None:
        now = self.clock.now()
        self.sched.reserve(rep.id, now)
        if rep.inflight == 1:
            rep.busy_since = now
        try:
            await self._resize(rep)
        except WorkerDied as e:
            self._on_death(rep, str(e))
            return
        except Exception as e:
            self._resize_refused(rep, e)
        now = self.clock.now()
        stop = self.sched.release(rep.id, now)
        self._busy_end(rep, now)
        if stop:
            self._stop(rep)
        self.pump()

    def _on_death(self, rep: Replica, why: str) -> None:
        now = self.clock.now()
        if rep.state == DEAD:  # several in-flight operations report the same death
            return
        was_busy = rep.inflight > 0
        requeued, failed = self.sched.on_replica_died(rep.id, now)
        if was_busy:
            self._busy_end(rep, now)
        self.account(now)
        self.counters.replica_deaths += 1
        rep.state = DEAD
        if rep in self.replicas:
            self.replicas.remove(rep)
        if rep.executor is not None:
            self._spawn(self.offload(_quiet_stop, rep.executor))
        log.warning("stage %s: replica %s (pid %s) died: %s", self.stage, rep.id, rep.pid, why)
        sick = getattr(rep, "sick_reason", "")
        for req in failed:
            if sick:  # the watchdog killed it and the deadline (or retries) leave no retry
                self.counters.violations["expired"] += 1
                _answer_error(
                    req,
                    Refused(
                        504,
                        "expired",
                        f"replica {rep.id} of {self.variant!r} hung ({sick}); killed, and the "
                        "deadline leaves no time to retry",
                    ),
                )
                continue
            self.counters.violations["error"] += 1
            _answer_error(
                req, Refused(502, "error", f"worker of {self.variant!r} died mid-batch: {why}")
            )
        if self.closed:
            for req in self.sched.drain():
                _answer_error(req, Refused(503, "refused", "server shutting down"))
            return
        self._replacing = True
        try:
            self._ensure_target()
        finally:
            self._replacing = False
        self.pump()

    # ---------------------------------------------------------------- scaling
    def reconcile(
        self, replicas: int, cores: float, batch: int, phase: str = "all"
    ) -> list[asyncio.Task[Any]]:
        """Move towards `replicas` x `cores` at max batch `batch`; return the tasks started
        (replica starts, idle resizes). `phase` orders a plan change so that a full node can
        take a plan that fits: "shrink" retires extras and applies smaller cores, "grow"
        applies larger cores, "start" starts missing replicas; "all" does everything."""
        self.account(self.clock.now())
        self.target = replicas
        self.sched.max_batch = batch
        tasks: list[asyncio.Task[Any]] = []
        resize_now = cores != self.cores and (
            phase == "all"
            or (phase == "shrink" and cores < self.cores)
            or (phase == "grow" and cores > self.cores)
        )
        if resize_now:
            self.cores = cores
            for r in self.replicas:
                if r.state in (READY, STARTING):
                    self.sched.set_cores(r.id, cores)
                    if r.state == READY and not r.busy:
                        tasks.append(self._spawn(self._resize_idle(r)))
        tasks += self._ensure_target(start=phase in ("all", "start"))
        self.pump()
        return tasks

    def _ensure_target(self, start: bool = True) -> list[asyncio.Task[Any]]:
        active = [r for r in self.replicas if r.state in (READY, STARTING)]
        live = [r for r in active if not r.retire_when_started]
        tasks: list[asyncio.Task[Any]] = []
        # Un-retire replicas still starting before starting new ones.
        for r in active:
            if len(live) >= self.target:
                break
            if r.retire_when_started:
                r.retire_when_started = False
                live.append(r)
        while start and len(live) < self.target and not self.closed:
            self.account(self.clock.now())
            self._next_id += 1
            rep = Replica(self._next_id, self.cores, variant=self.variant)
            if self._replacing and self._cold_est is not None:
                # A replacement after a death: admission lets requests that can wait for it
                # wait (the estimate is 1.5 x this lane's last cold start).
                rep.expected_ready = self.clock.now() + 1.5 * self._cold_est
            self.replicas.append(rep)
            self.sched.add_replica(rep)
            rep.starter = asyncio.get_running_loop().create_task(self._start(rep))
            tasks.append(rep.starter)
            live.append(rep)
        # Keep one replica while requests are still queued for this variant (zero lost).
        extra = len(live) - max(self.target, 1 if self.sched.queue else 0)
        if extra > 0:
            # Retire: starting ones first, then idle ready ones, then busy ones.
            order = sorted(live, key=lambda r: (r.state != STARTING, r.busy, -r.id))
            for r in order[:extra]:
                if r.state == STARTING:
                    r.retire_when_started = True
                else:
                    self.account(self.clock.now())
                    if self.sched.on_replica_removed(r.id):  # idle: stop now
                        self._stop(r)
        return tasks

    async def _start(self, rep: Replica) -> None:
        t0 = self.clock.now()
        start_cores = rep.cores
        try:
            ex = await self.offload(self.factory, self.variant, start_cores)
        except Exception as e:
            log.error("stage %s: starting %s failed: %s", self.stage, self.variant, e)
            self.account(self.clock.now())
            self.sched.on_replica_died(rep.id, self.clock.now())
            rep.state = DEAD
            if rep in self.replicas:
                self.replicas.remove(rep)
            return
        rep.executor = ex
        rep.applied_cores = start_cores
        if self.on_calibrate is not None:
            try:
                await self.offload(self.on_calibrate, self, rep)
            except Exception as e:  # calibration is best effort; keep the prior profile
                log.warning("calibration of %s failed: %s", self.variant, e)
        cold = float(getattr(ex, "cold_start_s", self.clock.now() - t0))
        self.counters.cold_start.observe(cold)
        self._cold_est = max(cold, self.clock.now() - t0)
        if rep.retire_when_started or self.closed:
            self.account(self.clock.now())
            self.sched.on_replica_removed(rep.id)
            rep.state = STOPPED
            if rep in self.replicas:
                self.replicas.remove(rep)
            await self.offload(_quiet_stop, ex)
            return
        now = self.clock.now()
        self.account(now)
        self.sched.on_replica_ready(rep.id, now)
        rep.ready_at = now
        self._arm_sweep()
        self.watchdog.arm()
        if rep.applied_cores != rep.cores:
            self._spawn(self._resize_idle(rep))
        self.pump()

    def _on_sick(self, sick: Sick) -> None:
        """The watchdog found `sick.replica`'s batch overdue or its worker stalled, or the
        idle replica's worker stopped (`IDLE`): no new batches on it, kill the worker; the
        death path retries or answers the batch (an idle one has none) and replaces it."""
        rep = next((r for r in self.replicas if r.id == sick.replica), None)
        if rep is None or rep.state == DEAD:
            return
        idle = sick.batch_id == IDLE
        if idle and (rep.state != READY or rep.busy):
            return  # it took a batch meanwhile: the batch rules judge it
        if not idle and sick.batch_id not in self.sched.inflight:
            return
        self.counters.watchdog_kills += 1
        rep.sick_reason = sick.reason  # type: ignore[attr-defined]
        self.sched.mark_sick(rep.id)
        log.warning("stage %s: replica %s sick: %s", self.stage, rep.id, sick.reason)
        self._replacing = True  # start the replacement now: arrivals may wait for it
        try:
            self._ensure_target()
        finally:
            self._replacing = False
        ex = rep.executor
        kill = getattr(ex, "kill", None)
        if callable(kill):
            kill()  # the batch's call then fails with WorkerDied: the death path runs
        if idle or not callable(kill):  # no batch call to fail: take the death path now
            self._on_death(rep, f"killed by the watchdog: {sick.reason}")

    def _stop(self, rep: Replica) -> None:
        self.account(self.clock.now())
        self.sched.on_replica_removed(rep.id)
        rep.state = STOPPED
        if rep in self.replicas:
            self.replicas.remove(rep)
        if rep.executor is not None:
            self._spawn(self.offload(_quiet_stop, rep.executor))

    def idle(self) -> bool:
        """No queued request and no batch in flight."""
        return self.sched.idle()

    async def close(self) -> None:
        """Answer queued requests 503, stop every replica, wait for the stops."""
        self.closed = True
        self.watchdog.close()
        if self._timer is not None:
            self._timer.cancel()
        if self._sweep is not None:
            self._sweep.cancel()
        for req in self.sched.drain():
            _answer_error(req, Refused(503, "refused", "server shutting down"))
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


def _answer_error(req: QueuedRequest, err: Refused) -> None:
    fut = getattr(req, "fut", None)
    if fut is not None and not fut.done():
        fut.set_exception(err)


def _quiet_stop(ex: object) -> None:
    with contextlib.suppress(Exception):
        ex.stop()  # type: ignore[attr-defined]
