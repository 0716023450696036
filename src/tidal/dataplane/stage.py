"""A live pipeline stage: traffic split across its variants (InfAdapter weights, by the one
`tidal.dataplane.routing.Router`), and one `VariantGroup` (the asyncio driver of a lane's
`GroupScheduler`: queue, admission, batcher, replicas) per variant.

Contract of `submit`: returns the stage's output rows for the request, or raises `Refused`
(503 no ready replica or refused by admission, 504 expired, 5xx on worker failure).
Admission (in the scheduler) uses the request's stage deadline: its end-to-end deadline minus
the batch-1 service time of later stages (`downstream_s`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tidal.core.clock import Clock
from tidal.core.plan import StagePlan, VariantWeight
from tidal.core.profile import LatencyFit
from tidal.dataplane.group import VariantGroup
from tidal.dataplane.metrics import StageCounters, StageSnapshot
from tidal.dataplane.replica import (
    ExecutorFactory,
    LiveRequest,
    Refused,
    Replica,
    StageResult,
)
from tidal.dataplane.routing import Router
from tidal.dataplane.scheduler import SchedulerConfig
from tidal.dataplane.timers import Offload, Timers

CALIBRATION_REPS = 5


class Stage:
    """One stage: variants, weights, groups, counters."""

    def __init__(
        self,
        name: str,
        variants: list[str],
        *,
        clock: Clock,
        factory: ExecutorFactory,
        fits: dict[str, LatencyFit],
        scheduler: SchedulerConfig,
        timers: Timers | None = None,
        offload: Offload | None = None,
    ) -> None:
        self.name = name
        self.allowed = list(variants)
        self.clock = clock
        self.factory = factory
        self.fits = dict(fits)
        self.config = scheduler
        self.serve_late = not scheduler.admission
        self.timers = timers
        self.offload = offload
        self.counters = StageCounters()
        self.groups: dict[str, VariantGroup] = {}
        self.router = Router()
        self.plan: StagePlan | None = None
        self.downstream_s: Callable[[], float] = lambda: 0.0
        self.last_refused = -float("inf")
        """When this stage last refused a request (clock seconds; `tidal.dataplane.early`
        prices a one-row request at its headers only while refusals are recent)."""
        # Issue 13 (set by the Gateway from ServeConfig.limits): each lane's queue caps and
        # its batch watchdog's settings.
        self.caps_for: Callable[[str], Any] | None = None
        self.watchdog: Any = None

    # ------------------------------------------------------------------ latency
    def latency_s(self, variant: str) -> Callable[[int, float], float]:
        """l(b, c) in seconds for `variant` (profile fit, or calibration once measured)."""

        def lat(b: int, c: float) -> float:
            fit = self.fits.get(variant)
            if fit is None:  # before calibration: a deliberately pessimistic 5 ms + 5 ms/b
                return 0.005 + 0.005 * b / c
            # / 1000.0, as the simulator's VariantLatency.l_s: the same floats live and simulated
            return max(fit.latency_ms(b, c), 0.001) / 1000.0

        return lat

    def calibrate(self, group: VariantGroup, rep: Replica) -> None:
        """Measure l(1) and l(B) on a freshly started replica when no profile exists (blocking;
        runs in a thread before the replica takes traffic). Fit l(b,c) = gamma*b/c + eta."""
        if group.variant in self.fits or rep.executor is None:
            return
        from tidal.models.catalog import get_variant

        spec = get_variant(group.variant).input
        bmax = max(2, group.max_batch)
        infer = getattr(rep.executor, "infer", None)
        if infer is None:
            return

        def best(b: int) -> float:
            x = spec.sample(b)
            out = []
            for _ in range(CALIBRATION_REPS):
                t0 = time.perf_counter()
                infer(x)
                out.append(time.perf_counter() - t0)
            return sorted(out)[len(out) // 2] * 1e3

        l1, lb = best(1), best(bmax)
        slope = max(0.0, (lb - l1) / (bmax - 1))
        self.fits[group.variant] = LatencyFit(
            gamma=slope * rep.cores, delta=0.0, epsilon=0.0, eta=max(0.0, l1 - slope)
        )

    # ------------------------------------------------------------------ plan
    def apply(self, sp: StagePlan, phase: str = "all") -> list[asyncio.Task[Any]]:
        """Reconcile every variant with `sp` (idempotent); returns the replica start and
        resize tasks. `phase`: see `VariantGroup.reconcile` (weights and the plan are taken
        in the "start" and "all" phases)."""
        tasks: list[asyncio.Task[Any]] = []
        wanted = {v.name: v for v in sp.variants}
        for name in wanted:
            if name not in self.groups:
                self.groups[name] = VariantGroup(
                    self.name,
                    name,
                    clock=self.clock,
                    factory=self.factory,
                    latency_s=self.latency_s(name),
                    counters=self.counters,
                    config=self.config,
                    on_calibrate=self.calibrate,
                    timers=self.timers,
                    offload=self.offload,
                    watchdog=self.watchdog,
                )
                if self.caps_for is not None:
                    self.groups[name].sched.caps = self.caps_for(name)
        for name, g in self.groups.items():
            vw: VariantWeight | None = wanted.get(name)
            if vw is None:
                tasks += g.reconcile(0, g.cores, g.max_batch, phase)
            else:
                tasks += g.reconcile(sp.replicas_of(name), sp.cores_of(name), sp.batch, phase)
        if phase in ("all", "start"):
            self.router.set_weights({v.name: v.weight for v in sp.variants})
            self.plan = sp
        return tasks

    @property
    def weights(self) -> dict[str, float]:
        return self.router.weights

    # ------------------------------------------------------------------ requests
    def _routable(self, name: str) -> bool:
        return self.groups[name].sched.routable()

    async def submit(
        self,
        rid: int,
        x: np.ndarray,
        arrival: float,
        deadline: float,
        now: float,
        pin: str | None = None,
    ) -> StageResult:
        """Route (or take the pinned variant `pin`), admit, queue and await one request's
        rows `x` (see the module contract)."""
        c = self.counters
        c.arrivals += 1
        if pin is not None:
            pg = self.groups.get(pin)
            if pg is None or not pg.sched.routable():
                c.violations["refused"] += 1
                self.last_refused = now
                raise Refused(
                    503,
                    "refused",
                    f"variant {pin!r} of stage {self.name!r} has no ready replica",
                    1.0,
                )
            name: str | None = pin
        else:
            name = self.router.pick(self._routable)
        if name is None:
            c.violations["refused"] += 1
            self.last_refused = now
            starting = any(gg.starting() for gg in self.groups.values())
            raise Refused(
                503,
                "refused",
                f"stage {self.name!r} has no ready replica"
                + (" (replicas starting)" if starting else ""),
                1.0,
            )
        g = self.groups[name]
        g.sched.downstream_s = self.downstream_s()
        fut: asyncio.Future[StageResult] = asyncio.get_running_loop().create_future()
        req = LiveRequest(
            id=rid,
            arrival=arrival,
            deadline=deadline,
            rows=int(x.shape[0]) if x.ndim else 1,
            nbytes=int(x.nbytes),
            stage_arrival=now,
            x=x,
            fut=fut,
        )
        verdict = g.push(req, now)
        if isinstance(verdict, Refused):
            c.violations["refused"] += 1
            self.last_refused = now
            raise verdict
        try:
            res = await fut
        except asyncio.CancelledError:
            g.cancel(rid)
            raise
        g.sched.on_answered(req, res.finish, self.clock.now())
        c.completions += 1
        lat = res.finish - now
        c.latency.observe(lat)
        c.window.append(lat * 1e3)
        if res.finish > deadline:
            c.violations["late"] += 1
        return res

    def _weighted_lanes(self) -> list[VariantGroup]:
        w = self.router.weights
        return [g for n, g in self.groups.items() if w.get(n, 0.0) > 0.0 and g.sched.routable()]

    def pressured(self) -> bool:
        """Every lane the router may pick is under pressure (`GroupScheduler.pressured`)."""
        lanes = self._weighted_lanes()
        return bool(lanes) and all(g.sched.pressured() for g in lanes)

    def quote(self, rows: int, deadline: float, now: float) -> Refused | None:
        """Early refusal (`tidal.dataplane.early`): the Refused verdict when every lane the
        router may pick would refuse `rows` rows due at `deadline` now (counted as an arrival
        and a refusal, as `submit` counts it); None when one would admit it, or when none is
        routable (`submit` then answers). An idle lane is priced too (its fast path): it
        refuses what `submit` would refuse there, a batch longer than the budget."""
        lanes = self._weighted_lanes()
        if not lanes:
            return None
        verdict: Refused | None = None
        for g in lanes:
            g.sched.downstream_s = self.downstream_s()
            verdict = g.sched.quote(rows, deadline, now)
            if verdict is None:
                return None
        c = self.counters
        c.arrivals += 1
        c.violations["refused"] += 1
        self.last_refused = now
        return verdict

    # ------------------------------------------------------------------ views
    def snapshot(self, now: float) -> StageSnapshot:
        ready: list[Replica] = []
        starting = 0
        budgets: list[float] = []
        qlen = 0
        replica_s = core_s = 0.0
        cores: dict[str, float] = {}
        for name, g in self.groups.items():
            g.account(now)
            replica_s += g.replica_s
            core_s += g.core_s
            rs = g.ready()
            ready += rs
            starting += g.starting()
            qlen += len(g.queue)
            budgets += [b * 1e3 for b in g.queue.budgets(now)]
            if rs or g.target:
                cores[name] = g.cores
        c = self.counters
        return StageSnapshot(
            stage=self.name,
            now=now,
            arrivals=c.arrivals,
            completions=c.completions,
            violations=dict(c.violations),
            busy_s=c.busy_s,
            busy_core_s=c.busy_core_s,
            replica_s=replica_s,
            core_s=core_s,
            queue_len=qlen,
            in_flight=c.in_flight,
            budgets_ms=tuple(sorted(budgets)),
            replicas=len(ready),
            starting=starting,
            cores=cores,
            total_cores=sum(r.cores for r in ready),
            batch=self.plan.batch if self.plan else 0,
            latency_ms=tuple(c.window),
            replica_deaths=c.replica_deaths,
            cancelled=c.cancelled,
            watchdog_kills=c.watchdog_kills,
            queued_rows=sum(g.sched.queued_rows for g in self.groups.values()),
            queued_bytes=sum(g.sched.queued_bytes for g in self.groups.values()),
        )

    def replicas(self) -> list[Replica]:
        return [r for g in self.groups.values() for r in g.replicas]

    async def close(self) -> None:
        await asyncio.gather(*(g.close() for g in self.groups.values()))
