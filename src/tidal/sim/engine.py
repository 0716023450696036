"""The simulation loop: arrivals -> data plane (reference or fast) -> outcomes, with the
policy's control loop (monitor -> forecast -> plan -> actuate) at its own interval.

Contract of `simulate`:
- Arrivals are generated from `rates` (Poisson within each second, `tidal.workload`), chunk by
  chunk; deadlines are ``arrival + slo`` or per-request LTE budgets (``dynamic_slo``).
- The planner (wrapped in the planners' `Governed`) is called at t = 0 and every
  ``interval_s``. At t = 0 it sees a rate history of 60 s at the trace's first rate (the
  service was already running) and its replicas are ready at once (``warm_start``).
- Control events happen at planner ticks, replica readiness, resize completion and plot
  samples; the data plane runs every event up to each of them (events at the same time: data
  plane first, then control, then a dispatch retry on every lane).
- The forecaster (if any) is called at ticks, at most once per its ``refresh_s`` (the
  predictor's bucket: 10 s for IPA's setting), and its value is held in between.
- Each planner's observations are taken over its own metric window (``window_s`` or
  ``look_back`` attribute of the inner planner, e.g. Ray Serve's 30 s, else its interval),
  in whole seconds ending at the control ticks (with ``control_lead_s`` the ticks fall
  within a second and every per-second series is shifted to end there, as a live monitor
  samples at its controller's ticks).
- The planner plans with `predict_profiles` when given (what the live system loads), else
  with `profiles`; with ``calibrate`` the live controller's calibration scales it by the
  slowdown measured on the simulated batches (`tidal.sim.monitor.SimMonitor.service`).
- After the trace ends the system drains for ``drain_s``; what is left is `unfinished`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tidal.control.controller import Controller
from tidal.control.decisions import DecisionLog
from tidal.core.clock import Clock, MonotonicClock, SimClock
from tidal.core.errors import TidalError
from tidal.core.pipeline import PipelineSpec
from tidal.core.plan import Plan
from tidal.core.profile import ProfileSet, VariantProfile
from tidal.planners.base import (
    Capacity,
    Planner,
    StageCandidates,
    create,
)
from tidal.sim.actuator import SimActuator
from tidal.sim.config import CAUSES, LATE, OK, SIM_SCHEDULER, US, SimConfig
from tidal.sim.latency import VariantLatency, noise_table
from tidal.sim.monitor import SeriesRecorder, SimMonitor
from tidal.sim.outcomes import OutcomeSink
from tidal.sim.reference import INF, NEED_INPUT, ReferenceDataPlane
from tidal.workload import arrival_chunks, dynamic_slos, to_us

Forecaster = Callable[[Sequence[float]], float]

# The scheduler fields the fast kernel implements (`tidal.sim.fast`), then two that change
# nothing there (no simulated replica dies; prefetch acts only with pipeline_depth > 1);
# every other field of `SimConfig.scheduler` must be the simulator's default for the fast
# mode to apply.
FAST_SCHEDULER_FIELDS = ("admission", "hold_fraction", "hold_anchor", "max_retries", "prefetch_s")


@dataclass
class SimResult:
    """Aggregates of one run (per-request rows went to the CSV, if asked)."""

    policy: str
    mode: str
    requests: int
    counts: dict[str, int]
    p50_ms: float
    p99_ms: float
    core_seconds: float
    duration_s: float
    mean_accuracy: float
    replica_starts: int
    resizes: int
    recreates: int
    decisions: int
    decision_ms_mean: float
    infeasible_plans: int
    series: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def violations(self) -> int:
        return self.requests - self.counts["ok"]

    @property
    def slo_violation_rate(self) -> float:
        return self.violations / self.requests if self.requests else 0.0

    @property
    def mean_cores(self) -> float:
        return self.core_seconds / self.duration_s if self.duration_s else 0.0

    def summary(self) -> dict[str, Any]:
        """The JSON row of `tidal simulate --json`."""

        def r(x: float, k: int = 6) -> float | None:
            return None if x is None or math.isnan(x) else round(float(x), k)

        return {
            "policy": self.policy,
            "slo_violation_rate": r(self.slo_violation_rate),
            "core_seconds": r(self.core_seconds, 3),
            "mean_accuracy": r(self.mean_accuracy),
            "p99_ms": r(self.p99_ms, 3),
            "requests": self.requests,
            "p50_ms": r(self.p50_ms, 3),
            "mean_cores": r(self.mean_cores, 4),
            "violations": {c: self.counts[c] for c in CAUSES if c != "ok"},
            "replica_starts": self.replica_starts,
            "resizes": self.resizes,
            "recreates": self.recreates,
            "decision_ms_mean": r(self.decision_ms_mean, 4),
            "mode": self.mode,
        }


def _profiles_for(pipeline: PipelineSpec, profiles: ProfileSet) -> list[list[VariantProfile]]:
    return [[profiles.get(v) for v in st.variants] for st in pipeline.stages]


def _held(forecaster: Forecaster, clock: Clock) -> Forecaster:
    """The forecaster called at most once per its `refresh_s` (the predictor's bucket: 10 s
    for IPA's setting), its value held in between."""
    refresh = float(getattr(forecaster, "refresh_s", 0.0))
    last: list[Any] = [None, None]

    def f(history: Sequence[float]) -> float:
        now = clock.now()
        if last[0] is None or now - last[0] >= refresh - 1e-9:
            last[0], last[1] = now, forecaster(history)
        return float(last[1])

    return f


def _planner(policy: str | Planner, **kwargs: Any) -> Planner:
    from tidal.planners import Governed  # the planners' one wrapper

    p = create(policy, **kwargs) if isinstance(policy, str) else policy
    return p if isinstance(p, Governed) else Governed(p)


def fast_applies(pipeline: PipelineSpec, config: SimConfig) -> str:
    """'' when the fast kernel can run this case, else why not."""
    if len(pipeline.stages) != 1:
        return "the fast mode runs one-stage pipelines"
    if len(pipeline.stages[0].variants) != 1:
        return "the fast mode runs one variant per stage"
    if config.dynamic_slo:
        return "the fast mode runs a fixed SLO (FIFO = EDF)"
    if config.gateway:
        return "the gateway's predictions run in the reference mode"
    if config.calibrate:
        return "the controller's calibration runs in the reference mode"
    differ = [
        k
        for k, v in config.scheduler.model_dump().items()
        if k not in FAST_SCHEDULER_FIELDS and v != getattr(SIM_SCHEDULER, k)
    ]
    if differ:
        return (
            f"the fast mode runs the scheduler's {', '.join(FAST_SCHEDULER_FIELDS[:3])} only "
            f"(here {', '.join(differ)} differ from the simulator's default)"
        )
    return ""


def simulate(
    pipeline: PipelineSpec,
    profiles: ProfileSet,
    rates: np.ndarray,
    policy: str | Planner,
    config: SimConfig | None = None,
    csv_path: Path | None = None,
    forecaster: Forecaster | None = None,
    policy_kwargs: dict[str, Any] | None = None,
    n_bins: int = 600,
    predict_profiles: ProfileSet | None = None,
    initial_plan: Plan | None = None,
    slowdown: Sequence[tuple[float, Sequence[float]]] = (),
    decisions: DecisionLog | None = None,
) -> SimResult:
    """Replay `rates` (requests per second) through `pipeline` under `policy`.

    `predict_profiles`: the profile the system believes (reference mode; default
    `profiles`, which always gives the simulated service times): admission and the batcher
    predict with it and the planner plans with it (with `SimConfig.calibrate`, scaled by the
    slowdown the controller learns from the simulated batches, as live). `initial_plan`: in
    force (ready) at t=0 before the planner's first decision, whose new replicas then pay their
    cold start, as a live gateway started from its config's plan; default: the planner's
    first plan is in force at t=0 (``warm_start``). `slowdown`: the machine's speed over time
    (reference mode), (t, factors) sorted by t: from t (s) on, stage k's batches take
    factors[k] x the `profiles` time (a live run's measured slowdown, `tidal validate`).
    `decisions`: the controller's decision log (default a bounded one of its own)."""
    cfg = config or SimConfig()
    rates = np.asarray(rates, dtype=np.float64)
    if len(rates) == 0:
        raise TidalError("the trace is empty")
    stage_profiles = _profiles_for(pipeline, profiles)
    planner = _planner(policy, **(policy_kwargs or {}))
    pname = planner.name
    # The planner decides at 0, then at k x interval - lead; the monitor's seconds end at
    # those ticks (a live monitor samples at its controller's ticks): every per-second
    # series is shifted by the ticks' offset into the second.
    interval_us = max(1, int(round(planner.interval_s * US)))
    lead_us = int(round(cfg.control_lead_s * US)) % interval_us
    shift_us = lead_us % US
    why_not = fast_applies(pipeline, cfg)
    if not why_not and (predict_profiles is not None or initial_plan is not None):
        why_not = "predict_profiles and initial_plan run in the reference mode"
    if not why_not and slowdown:
        why_not = "a slowdown schedule runs in the reference mode"
    if not why_not and cfg.cpu_quota:
        why_not = "the CPU quota model (cpu_quota) runs in the reference mode"
    if not why_not and shift_us:
        why_not = "control ticks within a second (control_lead_s) run in the reference mode"
    mode = cfg.mode
    if mode == "auto":
        mode = "reference" if why_not else "fast"
    if mode == "fast" and why_not:
        raise TidalError(f"--mode fast is not available here: {why_not}; use --mode reference")
    lanes = [[(VariantLatency(v), v.accuracy) for v in st] for st in stage_profiles]
    sigmas = [lat.sigma for st in lanes for lat, _ in st]
    eps = noise_table(sigmas, cfg.seed, cfg.noise)
    dp: Any
    if mode == "fast":
        from tidal.sim.fast import FastDataPlane

        dp = FastDataPlane(lanes[0][0][0], lanes[0][0][1], eps[0], cfg.scheduler)
    else:
        predict = None
        if predict_profiles is not None or cfg.gateway:
            src = _profiles_for(pipeline, predict_profiles or profiles)
            predict = [[VariantLatency(v) for v in st] for st in src]
            if cfg.gateway:  # the gateway predicts with the fit as is (no Amdahl cap)
                for st_lat in predict:
                    for pl in st_lat:
                        pl.max_cores = math.inf
        dp = ReferenceDataPlane(
            lanes,
            eps,
            pipeline.accuracy_combine,
            predict=predict,
            scheduler=cfg.scheduler,
            cpu_quota=cfg.cpu_quota,
        )
    cap = Capacity(nodes=cfg.nodes, cores_per_node=cfg.cores_per_node)
    recreate = "recreate" in str(getattr(planner, "resize_mode", "")).lower()
    act = SimActuator(
        dp,
        [(st.name, vs) for st, vs in zip(pipeline.stages, stage_profiles, strict=True)],
        cap,
        pname,
        recreate,
        cfg.resize_s,
    )
    # The planner plans with what the system believes (`predict_profiles`, as the live
    # controller plans with the profile the gateway loads), the batches take `profiles`' time.
    plan_profiles = (
        stage_profiles if predict_profiles is None else _profiles_for(pipeline, predict_profiles)
    )
    candidates = tuple(
        StageCandidates(st.name, tuple(vs))
        for st, vs in zip(pipeline.stages, plan_profiles, strict=True)
    )
    variant_names = [v.name for vs in stage_profiles[-1:] for v in vs]
    dur_s = len(rates)
    end_us = int((dur_s + cfg.drain_s) * US)
    bin_s = max(1.0, math.ceil((dur_s + cfg.drain_s) / n_bins))
    nb = int(math.ceil((dur_s + cfg.drain_s) / bin_s))
    sink = OutcomeSink(bin_s, nb, variant_names, csv_path)
    counts_s = np.zeros(dur_s + 1, dtype=np.int64)  # entry arrivals per second (monitor)

    # Arrival chunks -> microseconds + deadlines.
    slo_us = int(round(cfg.slo_ms * 1000))
    chunks = arrival_chunks(rates, cfg.seed)
    fed_until = [0]

    def feed() -> bool:
        try:
            t = next(chunks)
        except StopIteration:
            dp.feed(np.zeros(0, np.int64), np.zeros(0, np.int64), INF)
            return False
        a = to_us(t)
        if cfg.dynamic_slo:
            d = a + np.round(dynamic_slos(t, cfg.slo_ms, cfg.seed) * 1000).astype(np.int64)
        else:
            d = a + slo_us
        if len(a):  # sorted: count over the chunk's span only
            sec = np.minimum((a + shift_us) // US, dur_s)
            n = np.bincount(sec - sec[0])
            counts_s[sec[0] : sec[0] + len(n)] += n
        from tidal.workload.arrivals import CHUNK_S

        fed_until[0] = min(dur_s, fed_until[0] + CHUNK_S)
        horizon = fed_until[0] * US if fed_until[0] < dur_s else INF
        dp.feed(a, d, horizon)
        return True

    feed()

    # The control loop: the live Controller (monitor -> forecast -> Governed planner ->
    # actuation, the same plan-handling rules) over a monitor of the run's per-second series.
    n_st = len(pipeline.stages)
    rec = SeriesRecorder(n_st, dur_s + int(math.ceil(cfg.drain_s)) + 2, service=cfg.calibrate)
    if mode == "fast":
        dp.record_series(rec.busy_core_us[0])
    else:
        dp.record_series(rec.arrivals, rec.busy_core_us, rec.service, shift_us)
    recent: deque[tuple[np.ndarray, np.ndarray]] = deque()
    inner = getattr(planner, "inner", planner)
    window_s = getattr(inner, "window_s", None) or getattr(inner, "look_back", None)
    window_us = int(float(window_s or planner.interval_s or 1) * US)
    core_us = 0.0
    series_t: list[float] = []
    series_cores: list[float] = []
    series_reps: list[int] = []

    def window_latencies() -> np.ndarray:
        lat = [x[1] for x in recent if len(x[1])]
        return np.concatenate(lat) if lat else np.zeros(0)

    monitor = SimMonitor(
        [st.name for st in pipeline.stages],
        rec,
        counts_s,
        float(rates[0]),
        cfg.history_s,
        dp.queue_len,
        dp.inflight,
        act.ready_count,
        dp.entry_budgets_ms,
        window_latencies,
        shift_us,
    )
    clock = SimClock()
    controller = Controller(
        planner,
        act,
        monitor,
        candidates,
        cfg.slo_ms,
        clock,
        forecaster=_held(forecaster, clock) if forecaster is not None else None,
        decisions=decisions,
        apply_best_effort=not cfg.skip_infeasible,
        policy=pname,
        calibrate=cfg.calibrate,
        timer=MonotonicClock(),
        strict=True,
    )
    dec_ms: list[float] = []
    infeasible = 0

    def tick(now: int) -> None:
        nonlocal infeasible
        clock.advance_to(now / US)
        monitor.now_us = now
        act.warm_next = now == 0 and cfg.warm_start and initial_plan is None
        d = controller.decide(now / US)
        act.warm_next = False
        dec_ms.append(d.decision_ms)
        if d.output is not None and not d.feasible:
            infeasible += 1

    def drain_outcomes(now: int) -> None:
        rows = dp.drain()
        if isinstance(rows, list):
            if not rows:
                return
            arr = np.array(rows, dtype=np.float64)
            ids = arr[:, 0].astype(np.int64)
            a = arr[:, 1].astype(np.int64)
            d = arr[:, 2].astype(np.int64)
            e = arr[:, 3].astype(np.int64)
            cause = arr[:, 4].astype(np.int64)
            acc = arr[:, 5]
            var = arr[:, 6].astype(np.int64)
        else:
            ids, a, d, e, cause, acc, var = rows
            if len(ids) == 0:
                return
        sink.add(ids, a, d, e, cause, acc, var)
        served = (cause == OK) | (cause == LATE)
        recent.append((e[served], (e[served] - a[served]) / 1000.0))
        while recent and len(recent[0][0]) and recent[0][0][-1] < now - window_us:
            recent.popleft()
        while len(recent) > 1 and len(recent[0][0]) == 0:
            recent.popleft()

    speed = [(int(round(t * US)), f) for t, f in slowdown]
    if any(len(f) != n_st for _, f in speed) or any(
        b[0] < a[0] for a, b in zip(speed, speed[1:], strict=False)
    ):
        raise TidalError(f"slowdown: expected (t, {n_st} factors) sorted by t")
    k_speed = 0

    def set_speed(now: int) -> None:
        nonlocal k_speed
        while k_speed < len(speed) and speed[k_speed][0] <= now:
            for s in range(n_st):
                dp.set_slowdown(s, float(speed[k_speed][1][s]))
            k_speed += 1

    set_speed(0)
    if initial_plan is not None:
        act.apply(initial_plan, warm=True)
        controller.last_feasible = initial_plan
    tick(0)
    dp.kick(0)
    now = 0
    next_tick = interval_us - lead_us
    sample_us = int(bin_s * US)
    next_sample = 0
    while True:
        cands = [next_tick, next_sample, end_us]
        if k_speed < len(speed):
            cands.append(max(speed[k_speed][0], now))
        ne = act.next_event()
        if ne >= 0:
            cands.append(max(ne, now))
        t = min(cands)
        while dp.run_until(t) == NEED_INPUT:
            feed()
        if t == next_tick or t >= end_us:  # the planner's window latencies; else they wait
            drain_outcomes(t)
        cores, _ = act.allocated()
        core_us += cores * (t - now)
        for s in range(n_st):
            rec.add_alloc(s, now + shift_us, t + shift_us, act.ready_cores(s))
        now = t
        set_speed(t)
        act.advance(t)
        if t == next_tick and t < end_us:
            tick(t)
            next_tick += interval_us
        if t == next_sample:
            c, n = act.allocated()
            series_t.append(t / US)
            series_cores.append(c)
            series_reps.append(n)
            next_sample += sample_us
        dp.kick(t)
        if t >= end_us:
            break
    dp.finish()
    drain_outcomes(end_us)
    sink.close()
    n_total = sink.requests
    served = sink.served
    edges = np.arange(nb) * bin_s
    series = {
        "t": edges,
        "load": sink.arrivals_t / bin_s,
        "violations": sink.viol_t / np.maximum(1, sink.arrivals_t),
        "p99_ms": sink.p99_series_ms(),
        "sample_t": np.array(series_t),
        "cores": np.array(series_cores),
        "replicas": np.array(series_reps),
    }
    return SimResult(
        policy=pname,
        mode=mode,
        requests=n_total,
        counts={c: int(sink.counts[i]) for i, c in enumerate(CAUSES)},
        p50_ms=sink.percentile_ms(50),
        p99_ms=sink.percentile_ms(99),
        core_seconds=core_us / US,
        duration_s=end_us / US,
        mean_accuracy=sink.acc_sum / served if served else float("nan"),
        replica_starts=act.stats.starts,
        resizes=act.stats.resizes,
        recreates=act.stats.recreates,
        decisions=len(dec_ms),
        decision_ms_mean=float(np.mean(dec_ms)) if dec_ms else 0.0,
        infeasible_plans=infeasible,
        series=series,
    )
