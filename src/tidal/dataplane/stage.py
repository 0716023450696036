"""A live pipeline stage: traffic split across its variants (InfAdapter weights), admission
control, and one `VariantGroup` (queue + batcher + replicas) per variant.

Contract of `submit`: returns the stage's output rows for the request, or raises `Refused`
(503 refused by admission, 504 expired, 5xx on worker failure). Admission uses the request's
stage deadline: its end-to-end deadline minus the batch-1 service time of later stages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np

from tidal.core.clock import Clock
from tidal.core.plan import StagePlan, VariantWeight
from tidal.core.profile import LatencyFit
from tidal.dataplane.admission import admit
from tidal.dataplane.group import VariantGroup
from tidal.dataplane.metrics import StageCounters, StageSnapshot
from tidal.dataplane.replica import (
    READY,
    ExecutorFactory,
    LiveRequest,
    Refused,
    Replica,
    StageResult,
)

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
        serve_late: bool,
        max_retries: int,
        margin: float,
    ) -> None:
        self.name = name
        self.allowed = list(variants)
        self.clock = clock
        self.factory = factory
        self.fits = dict(fits)
        self.serve_late = serve_late
        self.max_retries = max_retries
        self.margin = margin
        self.counters = StageCounters()
        self.groups: dict[str, VariantGroup] = {}
        self.weights: dict[str, float] = {}
        self._credit: dict[str, float] = {}
        self.plan: StagePlan | None = None
        self.downstream_s: Callable[[], float] = lambda: 0.0

    # ------------------------------------------------------------------ latency
    def latency_s(self, variant: str) -> Callable[[int, float], float]:
        """l(b, c) in seconds for `variant` (profile fit, or calibration once measured)."""

        def lat(b: int, c: float) -> float:
            fit = self.fits.get(variant)
            if fit is None:  # before calibration: a deliberately pessimistic 5 ms + 5 ms/b
                return 0.005 + 0.005 * b / c
            return max(fit.latency_ms(b, c), 0.001) * 1e-3

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
    def apply(self, sp: StagePlan) -> list[asyncio.Task[None]]:
        """Reconcile every variant with `sp` (idempotent); returns replica start tasks."""
        tasks: list[asyncio.Task[None]] = []
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
                    serve_late=self.serve_late,
                    max_retries=self.max_retries,
                    on_calibrate=self.calibrate,
                )
        for name, g in self.groups.items():
            vw: VariantWeight | None = wanted.get(name)
            if vw is None:
                tasks += g.reconcile(0, g.cores, g.max_batch)
            else:
                tasks += g.reconcile(sp.replicas_of(name), sp.cores_of(name), sp.batch)
        self.weights = {v.name: v.weight for v in sp.variants if v.weight > 0}
        self._credit = {n: self._credit.get(n, 0.0) for n in self.weights}
        self.plan = sp
        return tasks

    # ------------------------------------------------------------------ requests
    def _route(self) -> VariantGroup | None:
        """Smooth weighted round robin over variants with weight > 0 and a ready replica
        (serve-late: a variant still starting is fine)."""
        best, best_credit, total = None, -1e18, 0.0
        for name, w in self.weights.items():
            g = self.groups[name]
            if self.serve_late:
                if not g.replicas:  # nothing ready or starting: it could never answer
                    continue
            elif not any(r.state == READY for r in g.replicas):
                continue
            total += w
            c = self._credit[name] + w
            self._credit[name] = c
            if c > best_credit:
                best, best_credit = name, c
        if best is None:
            return None
        self._credit[best] -= total
        return self.groups[best]

    def _fast_admit(self, g: VariantGroup, deadline: float, now: float) -> bool:
        """The common case without the full model: empty queue, an idle replica, and a batch
        of one that fits the budget (what `admit` would conclude, at a fraction of the cost)."""
        if g.queue:
            return False
        for r in g.replicas:
            if r.state == READY and not r.busy:
                lat = self.margin * g.latency_s(1, r.cores)
                return now + lat + self.downstream_s() <= deadline
        return False

    async def submit(
        self, rid: int, x: np.ndarray, arrival: float, deadline: float, now: float
    ) -> StageResult:
        """Admit, queue and await one request's rows `x` (see the module contract)."""
        c = self.counters
        c.arrivals += 1
        g = self._route()
        if g is None:
            c.violations["refused"] += 1
            starting = any(gg.starting() for gg in self.groups.values())
            raise Refused(
                503,
                "refused",
                f"stage {self.name!r} has no ready replica"
                + (" (replicas starting)" if starting else ""),
                1.0,
            )
        if not self.serve_late and not self._fast_admit(g, deadline, now):
            stage_deadline = deadline - self.downstream_s()
            q = g.queue
            probe = LiveRequest(id=rid, arrival=arrival, deadline=stage_deadline)
            ready = g.ready()
            verdict = admit(
                probe,
                q.count_before(deadline) if q else 0,
                len(q),
                g.busy_until(now),
                [r.cores for r in ready],
                g.latency_s,
                g.max_batch,
                now,
                margin=self.margin,
            )
            if not verdict.accepted:
                c.violations["refused"] += 1
                raise Refused(503, "refused", verdict.reason, verdict.retry_after_s)
        fut: asyncio.Future[StageResult] = asyncio.get_running_loop().create_future()
        req = LiveRequest(id=rid, arrival=arrival, deadline=deadline, x=x, fut=fut)
        req.stage_arrival = now
        g.push(req)
        try:
            res = await fut
        except Refused:
            raise
        except asyncio.CancelledError:
            g.queue.remove(rid)
            raise
        c.completions += 1
        lat = res.finish - now
        c.latency.observe(lat)
        c.window.append(lat * 1e3)
        if res.finish > deadline:
            c.violations["late"] += 1
        return res

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
        )

    def replicas(self) -> list[Replica]:
        return [r for g in self.groups.values() for r in g.replicas]

    async def close(self) -> None:
        await asyncio.gather(*(g.close() for g in self.groups.values()))
