"""The in-process data plane: models and pipelines over live stages, plans, metrics.

This is the Python API the HTTP layer (`tidal.dataplane.http`) and the controller use:

    gw = Gateway(config)                      # ServeConfig; nothing started yet
    await gw.start()                          # apply config.initial_plan(), wait until warm
    res = await gw.infer("digits", x, slo_ms=50)     # x: (n, *input) ndarray
    await gw.apply_plan(plan)                 # idempotent; never drops an accepted request
    gw.current_plan()                         # the Plan in force (all stages)
    gw.metrics_snapshot()                     # {stage: StageSnapshot}, see metrics.py
    await gw.stop()

All methods run on the gateway's event loop; from another thread use
`apply_plan_threadsafe(plan)` and `snapshot_threadsafe()`.
The deadline is fixed at arrival (arrival + slo) and carried through every stage.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tidal.config.serve import ServeConfig
from tidal.core.clock import Clock, MonotonicClock
from tidal.core.errors import TidalError
from tidal.core.plan import Plan, StagePlan
from tidal.core.profile import LatencyFit, ProfileSet
from tidal.dataplane.bounds import harden_stage
from tidal.dataplane.metrics import DataplaneCollector, StageCounters, StageSnapshot
from tidal.dataplane.replica import ExecutorFactory, Refused
from tidal.dataplane.scheduler import SchedulerConfig
from tidal.dataplane.stage import Stage
from tidal.dataplane.timers import Offload, Timers

log = logging.getLogger("tidal.dataplane")


@dataclass(slots=True)
class InferResult:
    """The answer of a model or pipeline: output rows and how they were served."""

    output: np.ndarray
    variants: list[str]
    batch_sizes: list[int]
    queue_ms: float
    total_ms: float
    late: bool


@dataclass(frozen=True)
class ModelInfo:
    """What `GET /v2/models/{name}` reports."""

    name: str
    stages: list[str]
    input_shape: tuple[int, ...]
    input_dtype: str
    output_shape: tuple[int, ...]
    versions: list[str]


_EXPORT_LOCK = threading.Lock()


def default_factory(variant: str, cores: float) -> object:
    """Start a real worker process (blocking until warm). The ONNX export (first use of a
    variant) is serialized: torch's exporter is not thread-safe."""
    from tidal.dataplane.worker import WorkerHandle
    from tidal.models.onnx_cache import onnx_path

    with _EXPORT_LOCK:
        onnx_path(variant)
    return WorkerHandle.start(variant, cores)


def _profile_fits(config: ServeConfig) -> dict[str, LatencyFit]:
    """Latency fits from the configured profile, else the reference profile, else none."""
    ps: ProfileSet | None = None
    if config.profile:
        ps = ProfileSet.load(config.profile)
    else:
        # The committed reference profile is package data (tidal/profiles/): read it as a
        # file, so the data plane does not import tidal.profiling (which imports it).
        ref = Path(__file__).resolve().parent.parent / "profiles" / "reference.json"
        try:
            ps = ProfileSet.load(ref)
        except Exception:  # no reference profile on this machine: calibrate on start
            ps = None
    return {n: v.fit for n, v in ps.variants.items()} if ps is not None else {}


def scheduler_config(config: ServeConfig, **overrides: object) -> SchedulerConfig:
    """The lanes' `SchedulerConfig` from a serve config (`overrides` win)."""
    base: dict[str, object] = {
        "admission": not config.serve_late,
        "expire": not config.serve_late,
        "margin": config.admission_margin,
        "max_retries": config.max_retries,
        "adapt_latency": True,  # issue 13: admit at the replicas' measured service rate
        "late_target": 0.005,  # issue 13: feedback margin, <= ~0.5% of admitted ones late
        "batch_deadline": True,  # issue 13: joiners must not make a batch's head late
        "expire_hopeless": not config.serve_late,  # issue 13: no replica time on late answers
        "price_overrun": True,  # issue 13: arrivals behind an overrunning batch priced later
    }
    base.update(overrides)
    return SchedulerConfig.model_validate(base)


class Gateway:
    """Models and pipelines served by live stages (see the module docstring)."""

    def __init__(
        self,
        config: ServeConfig,
        *,
        clock: Clock | None = None,
        factory: ExecutorFactory | None = None,
        fits: dict[str, LatencyFit] | None = None,
        scheduler: SchedulerConfig | None = None,
        timers: Timers | None = None,
        offload: Offload | None = None,
    ) -> None:
        """`scheduler`: the lanes' admission/batching/pipelining settings (default: from the
        config: `serve_late` turns admission and expiry off, `admission_margin`,
        `max_retries`); `timers`/`offload`: the lanes' timers on the clock and how blocking
        calls leave the loop (default asyncio's; tests pass `tidal.dataplane.timers`'
        `ManualTimers` on a SimClock and `inline`). TidalError naming the field for an
        unknown variant or a stage whose variants take different inputs."""
        from tidal.models.resolve import check_variants

        check_variants(config)
        self.config = config
        self.clock: Clock = clock or MonotonicClock()
        fac: ExecutorFactory = factory or default_factory  # type: ignore[assignment]
        fits = _profile_fits(config) if fits is None else fits
        self.scheduler = scheduler or scheduler_config(config)
        self.stages: dict[str, Stage] = {}
        for name, variants in config.stages():
            self.stages[name] = Stage(
                name,
                variants,
                clock=self.clock,
                factory=fac,
                fits=fits,
                scheduler=self.scheduler,
                timers=timers,
                offload=offload,
            )
        self._lanes = sum(len(v) for _, v in config.stages())
        for st in self.stages.values():  # issue 13: lane caps + watchdog from config.limits
            harden_stage(st, config.limits, self._lanes)
        self.routes = config.routes()
        self.models: dict[str, ModelInfo] = {}
        for model, snames in self.routes.items():
            self._add_route(model, snames)
        self._factory, self._timers, self._offload = fac, timers, offload
        self._unloading: set[str] = set()  # models being removed: new requests get 503
        self._ids = itertools.count(1)
        self._plan: Plan | None = None
        self._plan_lock: asyncio.Lock | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self, wait: bool = True) -> None:
        """Apply the config's initial plan (and wait for the replicas to be warm)."""
        self.loop = asyncio.get_running_loop()
        plan = await self.apply_plan(self.config.initial_plan(), wait=wait)
        if wait:
            for sp in plan.stages:
                if sp.total_replicas > 0 and not any(
                    r.state == "ready" for r in self.stages[sp.stage].replicas()
                ):
                    await self.stop()
                    raise TidalError(
                        f"stage {sp.stage!r}: no replica of {[v.name for v in sp.variants]} "
                        "could start (see the log)"
                    )
        self.ready = True

    async def stop(self) -> None:
        """Stop every replica (queued requests are answered 503)."""
        self.ready = False
        await asyncio.gather(*(s.close() for s in self.stages.values()))

    # ------------------------------------------------------------------ plans
    async def apply_plan(self, plan: Plan, wait: bool = True) -> Plan:
        """Reconcile the stages named in `plan` (others keep their allocation).

        Idempotent; accepted requests are never dropped (retired replicas finish their batch).
        `wait=True` returns once every replica being started is warm. TidalError names an
        unknown stage or a variant the stage may not run. Returns the plan now in force.
        """
        for sp in plan.stages:
            stage = self.stages.get(sp.stage)
            if stage is None:
                raise TidalError(f"plan: unknown stage {sp.stage!r}; stages: {list(self.stages)}")
            for v in sp.variants:
                if v.name not in stage.allowed:
                    raise TidalError(
                        f"plan: stage {sp.stage!r} cannot run variant {v.name!r}; "
                        f"allowed: {stage.allowed}"
                    )
        if self._plan_lock is None:
            self._plan_lock = asyncio.Lock()
        async with self._plan_lock:
            # Stop and shrink first, then grow in place, then start new replicas: on a full
            # node (Ray placement) a plan that fits can then be applied (measured: starting
            # first took the CPUs the grows needed). Idle resizes are awaited between phases.
            for phase in ("shrink", "grow"):
                resizes: list[asyncio.Task[object]] = []
                for sp in plan.stages:
                    resizes += self.stages[sp.stage].apply(sp, phase)
                if resizes:
                    await asyncio.gather(*resizes, return_exceptions=True)
            tasks: list[asyncio.Task[object]] = []
            for sp in plan.stages:
                tasks += self.stages[sp.stage].apply(sp, "start")
            merged = {s.stage: s for s in (self._plan.stages if self._plan else ())}
            merged.update({s.stage: s for s in plan.stages})
            self._plan = Plan(
                stages=tuple(merged[n] for n in self.stages if n in merged),
                feasible=plan.feasible,
                reason=plan.reason,
            )
        if wait and tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return self._plan

    def current_plan(self) -> Plan | None:
        """The plan in force (every stage applied so far), or None before `start`."""
        return self._plan

    def apply_plan_threadsafe(self, plan: Plan, wait: bool = True) -> Future[Plan]:
        """`apply_plan` from another thread; returns a concurrent Future."""
        if self.loop is None:
            raise RuntimeError("gateway not started")
        return asyncio.run_coroutine_threadsafe(self.apply_plan(plan, wait), self.loop)

    # ------------------------------------------------------------------ requests
    async def infer(
        self,
        model: str,
        x: np.ndarray,
        slo_ms: float | None = None,
        *,
        version: str | None = None,
        arrival: float | None = None,
    ) -> InferResult:
        """Serve `x` (shape (n, *input)) through `model`'s stages within `slo_ms`.

        `arrival`: when the request arrived on the gateway's clock (e.g. its first byte, before
        the body was read and parsed; default now, never later than now): the deadline is
        arrival + slo, so parsing time counts against the budget admission checks.

        `version`: a variant that must serve the request (pinned: the stage that may run it
        skips its weighted routing; same deadline and admission). Raises KeyError for an
        unknown model, TidalError for a version the model does not have, and `Refused` when a
        stage refuses (503, also when the pinned variant has no ready replica), expires or
        fails the request. The deadline is arrival + slo and is the same at every stage.
        """
        if model in self._unloading:
            raise Refused(503, "refused", f"model {model!r} is being unloaded", 1.0)
        snames = self.routes[model]
        pin_stage = None
        if version is not None:
            pin_stage = next((s for s in snames if version in self.stages[s].allowed), None)
            if pin_stage is None:
                raise TidalError(
                    f"model {model!r} has no version {version!r}; versions: "
                    f"{self.models[model].versions}"
                )
        now0 = self.clock.now()
        arrival = now0 if arrival is None else min(float(arrival), now0)
        budget = (slo_ms if slo_ms is not None else self.config.default_slo_ms) * 1e-3
        deadline = arrival + budget
        rid = next(self._ids)
        variants: list[str] = []
        batches: list[int] = []
        queue_s = 0.0
        cur = x
        now = now0  # the first stage sees the request now; its deadline counts from arrival
        for s in snames:
            pin = version if s == pin_stage else None
            res = await self.stages[s].submit(rid, cur, arrival, deadline, now, pin=pin)
            variants.append(res.variant)
            batches.append(res.batch_size)
            queue_s += res.queue_s
            cur = _chain(res.output, s, snames, self.stages)  # adapt tensors between stages
            now = res.finish
        end = self.clock.now()
        return InferResult(
            cur, variants, batches, queue_s * 1e3, (end - arrival) * 1e3, end > deadline
        )

    # ------------------------------------------------------------------ metrics
    def metrics_snapshot(self) -> dict[str, StageSnapshot]:
        """Per-stage in-process metrics (see `StageSnapshot` for the field contract)."""
        now = self.clock.now()
        return {name: s.snapshot(now) for name, s in self.stages.items()}

    def snapshot_threadsafe(self) -> dict[str, StageSnapshot]:
        """`metrics_snapshot` from another thread (runs it on the gateway's loop)."""
        if self.loop is None:
            return self.metrics_snapshot()

        async def _snap() -> dict[str, StageSnapshot]:
            return self.metrics_snapshot()

        return asyncio.run_coroutine_threadsafe(_snap(), self.loop).result(timeout=10)

    def collector(self) -> DataplaneCollector:
        """A Prometheus collector over this gateway's stages."""

        def data() -> dict[str, tuple[StageSnapshot, StageCounters]]:
            snaps = self.metrics_snapshot()
            return {n: (snaps[n], self.stages[n].counters) for n in snaps}

        return DataplaneCollector(data)

    def stage_plan(self, stage: str) -> StagePlan | None:
        return self.stages[stage].plan

    # ------------------------------------------------------------------ models at run time
    # (model repository, issue 12: load/unload while serving, no restart)
    def _add_route(self, model: str, snames: list[str]) -> None:
        from tidal.models.catalog import get_variant

        first = get_variant(self.stages[snames[0]].allowed[0])
        last = get_variant(self.stages[snames[-1]].allowed[0])
        out_shape = last.input_shape if last.name == "noop" else (last.num_outputs,)
        self.models[model] = ModelInfo(
            model,
            snames,
            first.input_shape,
            first.input.dtype,
            out_shape,
            sorted({v for s in snames for v in self.stages[s].allowed}),
        )
        for i, s in enumerate(snames):
            later = [self.stages[x] for x in snames[i + 1 :]]
            self.stages[s].downstream_s = _downstream(later)
        self.routes[model] = list(snames)

    async def add_model(
        self,
        name: str,
        stages: list[tuple[str, list[str]]],
        plan: Plan,
        fits: dict[str, LatencyFit] | None = None,
    ) -> None:
        """Serve a new model `name` (stages in order, each with its allowed variants) with
        `plan` for those stages, while the others keep serving. Returns once a replica of each
        stage is warm. TidalError (nothing left behind) for a taken name or stage, a plan
        naming other stages, or a stage whose replicas cannot start."""
        if name in self.routes:
            raise TidalError(f"model {name!r} is already served")
        taken = [s for s, _ in stages if s in self.stages]
        if taken:
            raise TidalError(f"stage names {taken} are already served")
        mine = {s for s, _ in stages}
        other = [sp.stage for sp in plan.stages if sp.stage not in mine]
        if other:
            raise TidalError(f"add_model {name!r}: plan names other stages {other}")
        for sname, variants in stages:
            self.stages[sname] = Stage(
                sname,
                variants,
                clock=self.clock,
                factory=self._factory,
                fits=dict(fits or {}),
                scheduler=self.scheduler,
                timers=self._timers,
                offload=self._offload,
            )
            harden_stage(self.stages[sname], self.config.limits, max(1, self._lanes))
        self._add_route(name, [s for s, _ in stages])
        try:
            await self.apply_plan(plan, wait=True)
            for sp in plan.stages:
                if sp.total_replicas > 0 and not any(
                    r.state == "ready" for r in self.stages[sp.stage].replicas()
                ):
                    raise TidalError(
                        f"stage {sp.stage!r}: no replica of {[v.name for v in sp.variants]} "
                        "could start (see the log)"
                    )
        except BaseException:
            await self._drop(name)
            raise

    def add_variants(
        self, model: str, variants: list[str], fits: dict[str, LatencyFit] | None = None
    ) -> None:
        """Allow new `variants` (new versions) on the stage of one-stage model `model` while it
        serves: nothing stops, the plan decides when they get replicas. TidalError for a
        pipeline; KeyError for an unknown model."""
        snames = self.routes[model]
        if len(snames) != 1:
            raise TidalError(f"model {model!r} is a pipeline: add versions to its stage models")
        st = self.stages[snames[0]]
        st.allowed += [v for v in variants if v not in st.allowed]
        st.fits.update(fits or {})
        self._add_route(model, snames)

    async def remove_model(self, name: str, drain_timeout_s: float = 30.0) -> None:
        """Stop serving `name`: new requests get 503 "being unloaded" at once; requests
        already queued or running finish (up to `drain_timeout_s`, then they get 503), then
        its stages stop and disappear. KeyError for an unknown model."""
        if name not in self.routes:
            raise KeyError(name)
        self._unloading.add(name)
        try:
            t_end = self.clock.now() + drain_timeout_s
            quiet = 0
            while quiet < 2 and self.clock.now() < t_end:
                snaps = [self.stages[s].snapshot(self.clock.now()) for s in self.routes[name]]
                busy = any(sn.queue_len or sn.in_flight for sn in snaps)
                quiet = 0 if busy else quiet + 1  # twice idle: nobody between two stages
                await asyncio.sleep(0.02)
            await self._drop(name)
        finally:
            self._unloading.discard(name)

    async def _drop(self, name: str) -> None:
        snames = self.routes.pop(name, [])
        self.models.pop(name, None)
        gone = [self.stages.pop(s) for s in snames if s in self.stages]
        await asyncio.gather(*(st.close() for st in gone), return_exceptions=True)
        if self._plan is not None:
            self._plan = self._plan.model_copy(
                update={"stages": tuple(sp for sp in self._plan.stages if sp.stage not in snames)}
            )


def _chain(out: np.ndarray, stage: str, route: list[str], stages: dict[str, Stage]) -> np.ndarray:
    """Stage output -> next stage input when their tensors differ (added by the closed-loop
    issue so that pipelines of different families chain, e.g. resnet -> bert): identity when
    the next stage takes this shape and dtype; int64 token ids = the top-scoring output
    indices (a deterministic "label as text" stand-in, ids in [1, 30521]); floats are tiled."""
    i = route.index(stage)
    if i + 1 >= len(route) or out.ndim < 1:
        return out
    from tidal.models.catalog import get_variant

    spec = get_variant(stages[route[i + 1]].allowed[0]).input
    n = out.shape[0]
    if tuple(out.shape[1:]) == tuple(spec.shape) and out.dtype == spec.np_dtype:
        return out
    size = int(np.prod(spec.shape))
    flat = out.reshape(n, -1)
    if spec.np_dtype.kind in "iu":
        top = np.argsort(-flat, axis=1, kind="stable")[:, :size]
        ids = np.resize(top, (n, size)) % 30521 + 1
        return ids.astype(spec.np_dtype).reshape(n, *spec.shape)
    rows = [np.resize(r, size) for r in flat]
    return np.stack(rows).astype(spec.np_dtype).reshape(n, *spec.shape)


def _downstream(later: list[Stage]) -> Callable[[], float]:
    """Sum over later stages of the batch-1 latency of their first planned variant."""

    def f() -> float:
        total = 0.0
        for st in later:
            if st.plan is None:
                continue
            v = st.plan.variants[0].name
            total += st.latency_s(v)(1, st.plan.cores_of(v))
        return total

    return f


__all__ = ["Gateway", "InferResult", "ModelInfo", "Refused"]
