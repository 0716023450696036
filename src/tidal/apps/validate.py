"""`tidal validate`: the same short trace and policy, live and in the simulator.

The live run comes first: the demo's `run_policy` (a fresh gateway + controller in a child
process, open-loop replay from this process). The simulator (`tidal.sim.simulate`) then gets
the same per-second rates (hence the same arrival times: both use `tidal.workload.arrivals`
with the same seed), the same SLO, policy and arguments, forecaster and capacity (worker
cores), and the live machine's speed: batches take the reference profile's time scaled per
stage by the slowdown the live controller observed (batch service time vs profile; see
`tidal.control.controller`), while the simulated system (gateway and planner) starts from
the unscaled reference profile, as the live one does, and its controller learns the
slowdown from the simulated batches through the same calibration
(`SimConfig.calibrate`). The simulator on the unscaled profile is reported too, and so is
the other model of a fractional-core replica's CPU quota (`sim_other_quota_model`): by
default the compared simulation gives every batch l(b, c) at the live speed (the quota's
bursts are in the live measurements, hence in the speed); with `cpu_quota=True` it
simulates the quota (`SimConfig.cpu_quota`, live the cgroup's `cpu.max`) and solves for the
speed so that the simulated controller measures what the live one did (`fit_speed`).
Measured (docs/user-guide.md, section 5): the quota model reproduces the live batch times'
load dependence, but not the live decisions better; the default stays without it.
Differences: violation rate (percentage points), p99 and core-seconds (relative), against a
stated agreement target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tidal.apps.demo import (
    ACCOUNT_DRAIN_S,
    FORECAST,
    POLICY_KWARGS,
    DemoSetup,
    RunResult,
    find_pipeline,
    run_policy,
    serve_config,
)
from tidal.apps.validate_speed import SCHEDULE_SPAN as SCHEDULE_SPAN
from tidal.apps.validate_speed import SPEED_BOUNDS as SPEED_BOUNDS
from tidal.apps.validate_speed import SPEED_ROUNDS as SPEED_ROUNDS
from tidal.apps.validate_speed import (
    fit_speed,
    held_slowdowns,
    live_slowdown,
    schedule_of,
    schedule_points,
)
from tidal.apps.validate_speed import measured_slowdowns as measured_slowdowns
from tidal.apps.validate_speed import slowdown_schedule as slowdown_schedule
from tidal.core.errors import TidalError
from tidal.dataplane.scheduler import SchedulerConfig
from tidal.workload import load_trace
from tidal.workload.loadgen import schedule_from_rates

# The agreement asked for (issue 11): violation rate within 1 percentage point, p99 within
# 10%, core-seconds within 2%.
TARGET_VIOLATION_PP = 1.0
TARGET_P99_REL = 0.10
TARGET_CORE_S_REL = 0.02
# Whether `validate` compares the simulation with the CPU quota modelled (see `validate`).
VALIDATE_CPU_QUOTA = False


@dataclass
class Comparison:
    live: dict[str, Any]
    sim: dict[str, Any]
    violation_pp: float
    p99_rel: float
    core_s_rel: float
    sim_profile_as_measured: dict[str, Any] | None = None
    slowdown: dict[str, float] | None = None
    control_lead_s: float = 0.0
    start_s: dict[str, float] | None = None
    loadavg_start: tuple[float, ...] = ()
    loadavg_end: tuple[float, ...] = ()
    """The machine's load averages (1, 5, 15 min) before the live run and after it."""
    sim_other_quota_model: dict[str, Any] | None = None
    """The simulation with the other CPU-quota model than `sim` (`validate(cpu_quota=)`)."""
    replayed: Comparison | None = None
    """Live against the simulation of the live decisions (`tidal.apps.validate_replay`)."""
    replay_ticks: int = 0
    """Simulated ticks that replayed a live decision's plan."""
    replay_actions_differ: int = 0
    """Replayed ticks whose controller action (applied, unchanged, kept) differs from live."""
    divergence: dict[str, Any] | None = None
    """Where the closed-loop simulated controller first chose another plan than the live one."""

    @property
    def agrees(self) -> bool:
        return (
            abs(self.violation_pp) <= TARGET_VIOLATION_PP
            and abs(self.p99_rel) <= TARGET_P99_REL
            and abs(self.core_s_rel) <= TARGET_CORE_S_REL
        )

    def diff(self) -> dict[str, Any]:
        return {
            "violation_rate_pp": round(self.violation_pp, 2),
            "p99_rel": None if math.isnan(self.p99_rel) else round(self.p99_rel, 3),
            "core_seconds_rel": round(self.core_s_rel, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "live": self.live,
            "sim": self.sim,
            "diff": self.diff(),
            "target": {
                "violation_rate_pp": TARGET_VIOLATION_PP,
                "p99_rel": TARGET_P99_REL,
                "core_seconds_rel": TARGET_CORE_S_REL,
            },
            "agrees": self.agrees,
            "slowdown": self.slowdown,
            "control_lead_s": round(self.control_lead_s, 2),
            "cold_start_s": {k: round(v, 3) for k, v in (self.start_s or {}).items()},
            "loadavg_start": [round(x, 2) for x in self.loadavg_start],
            "loadavg_end": [round(x, 2) for x in self.loadavg_end],
            "sim_with_reference_profile": self.sim_profile_as_measured,
            "sim_other_quota_model": self.sim_other_quota_model,
            "divergence": self.divergence,
            "sim_live_decisions": None
            if self.replayed is None
            else {
                "sim": self.replayed.sim,
                "diff": self.replayed.diff(),
                "agrees": self.replayed.agrees,
                "ticks_replayed": self.replay_ticks,
                "actions_differ": self.replay_actions_differ,
            },
        }


def make_validate_setup(
    trace: str,
    pipeline: str | None,
    slo_ms: float,
    damping: int | None,
    compress: int,
    duration_s: float,
    seed: int,
    reserve: float = 0.5,
) -> DemoSetup:
    import os

    from tidal.control.closedloop import load_profiles

    spec, pfile = find_pipeline(pipeline)
    ps = load_profiles()
    missing = [v for st in spec.stages for v in st.variants if v not in ps.variants]
    if missing:
        raise TidalError(f"the reference profile has no entry for {missing}; run `tidal profile`")
    rates = load_trace(trace, damping=damping, compress=compress, seed=seed)
    rates = np.asarray(rates[: max(1, math.ceil(duration_s))], dtype=float)
    sched = schedule_from_rates(rates, seed=seed, slo_ms=slo_ms)
    if not sched.offsets:
        raise TidalError(f"trace {trace!r} gives no request in {duration_s:g} s")
    cores = max(0.5, float(os.cpu_count() or 2) - reserve)
    desc = f"{trace} (damping {damping}, compress x{compress}), {len(rates)} s"
    return DemoSetup(
        spec, pfile, ps, slo_ms, cores, sched, rates, desc, False, serve_config(spec, slo_ms)
    )


def planner_window_s(policy: str) -> float:
    """The metric window the live controller measures `policy`'s observations over."""
    from tidal.planners.base import create

    planner = create(policy, **POLICY_KWARGS.get(policy, {}))
    inner = getattr(planner, "inner", planner)
    interval = float(getattr(planner, "interval_s", 1.0) or 1.0)
    return max(1.0, float(getattr(inner, "window_s", None) or interval))


def control_lead_s(
    decisions: list[dict[str, Any]], setup: DemoSetup, policy: str, max_s: float = 10.0
) -> float:
    """How long before the load the live controller made its first decision (the server
    starts, then the load generator): the lead that best reproduces the first stage's arrival
    rate logged with each decision from the schedule's arrival times (over the planner's
    metric window, as the controller measures it); 0 when nothing was logged."""
    w = planner_window_s(policy)
    first = setup.pipeline.stages[0].name
    ts, rs = [], []
    for d in decisions:
        r = next(
            (
                s.get("rate")
                for s in d.get("inputs", {}).get("stages", [])
                if s.get("stage") == first
            ),
            None,
        )
        if r is not None and "t" in d:
            ts.append(float(d["t"]))
            rs.append(float(r))
    if len(ts) < 2:
        return 0.0
    t = np.asarray(ts) - ts[0]
    rate = np.asarray(rs)
    offsets = np.sort(np.asarray(setup.schedule.offsets, dtype=float))
    best, best_err = 0.0, math.inf
    for lead in np.arange(0.0, max_s, 0.02):
        hi = np.searchsorted(offsets, t - lead, side="right")
        lo = np.searchsorted(offsets, t - lead - w, side="right")
        err = float(np.sum(((hi - lo) / w - rate) ** 2))
        if err < best_err - 1e-12:
            best, best_err = float(lead), err
    return best


def live_start_times(decisions: list[dict[str, Any]]) -> dict[str, float]:
    """Per variant, the live cold start: the mean time to effect (`time_to_effect_s`, the
    actuator's report: the new replicas' workers spawned, loaded and ready) of the applied
    decisions that added replicas of that variant and nothing else that takes time (no
    other stage grew in the same plan). The simulator starts a replica in the profile's
    `load_time_s`, the model's load alone (resnet18: 0.49 s), where a live worker also pays
    its process start: measured 1.4 s in a live hpa run, whose 2nd classify replica then
    came ~0.9 s later than the simulated one and 22 more requests were refused. {} when the
    run added no replica."""
    acc: dict[str, list[float]] = {}
    for d in decisions:
        tte = d.get("time_to_effect_s")
        if d.get("action") != "applied" or tte is None:
            continue
        cur = {st.get("stage"): st for st in d.get("inputs", {}).get("current") or []}
        grown: list[str] = []
        for st in d.get("output") or []:
            old = {
                v.get("name"): int(v.get("replicas", 0))
                for v in cur.get(st.get("stage"), {}).get("variants", [])
            }
            for v in st.get("variants", []):
                if int(v.get("replicas", 0)) > old.get(v.get("name"), 0):
                    grown.append(str(v.get("name")))
        if len(grown) == 1:
            acc.setdefault(grown[0], []).append(float(tte))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def scaled_profiles(
    setup: DemoSetup,
    slowdown: dict[str, float],
    noise: bool = True,
    start_s: dict[str, float] | None = None,
) -> Any:
    """The reference profile with each stage's variants scaled so that a simulated batch
    takes, on average, the live time: the live slowdown is a ratio of mean service times
    (measured batches) to the profile's l(b, c), a median; a simulated batch is l(b, c) times
    lognormal noise of mean exp(sigma^2 / 2) (`tidal.sim.latency`, with `noise`), so the
    profile is scaled by the slowdown over that mean. The simulated controller's calibration
    then measures the live factor. `start_s` (`live_start_times`): each variant's cold start
    as measured live, for the simulated replicas' `load_time_s`."""
    from tidal.control.controller import _scaled
    from tidal.sim.latency import VariantLatency

    ps = setup.profiles.model_copy(deep=True)
    for v, t in (start_s or {}).items():
        if v in ps.variants:
            ps.variants[v] = ps.variants[v].model_copy(update={"load_time_s": t})
    for st in setup.pipeline.stages:
        f = slowdown.get(st.name)
        if f:
            for v in st.variants:
                if v in ps.variants:
                    mean = math.exp(VariantLatency(ps.variants[v]).sigma ** 2 / 2) if noise else 1.0
                    ps.variants[v] = _scaled(ps.variants[v], f / mean)
    return ps


def live_scheduler(setup: DemoSetup) -> SchedulerConfig:
    """The SchedulerConfig the live gateway of this run uses (from its serve config)."""
    from tidal.config.serve import parse_serve_config
    from tidal.dataplane.gateway import scheduler_config

    return scheduler_config(parse_serve_config(setup.serve_config))


def simulate_same(
    setup: DemoSetup,
    policy: str,
    seed: int,
    profiles: Any = None,
    like_live: bool = True,
    lead_s: float = 0.0,
    slowdown: list[tuple[float, list[float]]] | None = None,
    decisions: list[dict[str, Any]] | None = None,
    cpu_quota: bool | None = None,
    planner: Any = None,
) -> dict[str, Any]:
    """The simulator's result for the live run's inputs (summary dict of `tidal simulate`).

    `like_live` models the live system where it differs from the simulator's defaults: the
    gateway's scheduler config (its hold window, expiry timer and learned service rate) and
    predictions (`SimConfig.gateway`: the profile the gateway loaded, the reference profile
    unscaled, while batches take the `profiles` time), the planner starting from that
    profile too and the controller's calibration learning the slowdown from the simulated
    batches (`SimConfig.calibrate`), the config's initial plan in force
    at t=0 (the planner's first plan then pays its cold start), and an infeasible plan
    left unapplied (the live controller keeps the last feasible one); `lead_s`: the live
    controller's lead over the load (`control_lead_s`), so that the planner decides at the
    same points of the trace; `slowdown`: the live machine's slowdown over time
    (`slowdown_schedule`), applied to the batches of `profiles`; with `like_live` also each
    fractional-core replica's CPU quota (`SimConfig.cpu_quota`; `cpu_quota` overrides).
    `decisions`, when given, is filled with the simulated controller's decision records
    (the live log's format). `planner`: the planner to run instead of `policy`'s (the
    replay of the live decisions, `validate_replay.ReplayPlanner`)."""
    from dataclasses import asdict

    from tidal.control.closedloop import make_forecaster
    from tidal.control.decisions import DecisionLog
    from tidal.core.plan import Plan
    from tidal.sim.config import SIM_SCHEDULER, SimConfig
    from tidal.sim.engine import simulate

    cfg = SimConfig(
        nodes=1,
        cores_per_node=setup.cores,
        slo_ms=setup.slo_ms,
        seed=seed,
        drain_s=ACCOUNT_DRAIN_S,  # the live run's accounting window, the same
        mode="reference",
        gateway=like_live,
        scheduler=live_scheduler(setup) if like_live else SIM_SCHEDULER,
        skip_infeasible=like_live,
        calibrate=like_live,
        control_lead_s=lead_s if like_live else 0.0,
        cpu_quota=like_live if cpu_quota is None else cpu_quota,
    )
    init = setup.serve_config.get("plan") if like_live else None
    fc = make_forecaster(FORECAST.get(policy))

    def forecaster(history: Any) -> float:
        v = fc(history) if fc is not None else None
        return float(v) if v is not None else float(history[-1]) if len(history) else 0.0

    log = DecisionLog(keep=1 << 20)
    res = simulate(
        setup.pipeline,
        profiles if profiles is not None else setup.profiles,
        setup.rates,
        policy if planner is None else planner,
        cfg,
        forecaster=forecaster if fc is not None else None,
        policy_kwargs=POLICY_KWARGS.get(policy, {}),
        predict_profiles=setup.profiles if like_live else None,
        initial_plan=Plan.model_validate(init) if init else None,
        slowdown=slowdown or (),
        decisions=log,
    )
    if decisions is not None:
        decisions.extend(asdict(d) for d in log.entries)
    out: dict[str, Any] = res.summary()
    return out


def live_summary(r: RunResult) -> dict[str, Any]:
    row = r.row()
    return {
        "policy": r.policy,
        "requests": row["requests"],
        "slo_violation_rate": row["slo_violation_rate"],
        "violations": row["violations"],
        "p99_ms": row["p99_ms"],
        "core_seconds": row["core_seconds"],
        "loadgen_kept_up": row["loadgen_kept_up"],
    }


def compare(live: dict[str, Any], sim: dict[str, Any]) -> Comparison:
    def rel(a: float | None, b: float | None) -> float:
        if a is None or b is None or not b:
            return math.nan
        return (a - b) / b

    return Comparison(
        live,
        sim,
        violation_pp=100.0 * (live["slo_violation_rate"] - sim["slo_violation_rate"]),
        p99_rel=rel(live["p99_ms"], sim["p99_ms"]),
        core_s_rel=rel(live["core_seconds"], sim["core_seconds"]),
    )


def validate(
    trace: str,
    policy: str,
    pipeline: str | None = None,
    slo_ms: float = 1000.0,
    damping: int | None = None,
    compress: int = 1,
    duration_s: float = 60.0,
    seed: int = 0,
    workdir: Path | None = None,
    on_progress: Any = None,
    on_ready: Any = None,
    cpu_quota: bool = VALIDATE_CPU_QUOTA,
    save_live: Path | None = None,
) -> Comparison:
    """Run `policy` on `trace` live and simulated; compare (`simulate_live`). `save_live`:
    write the live run (its summary, decision log and load averages) there as JSON, for
    `simulate_live` to re-simulate later."""
    import json
    import os
    import tempfile

    setup = make_validate_setup(trace, pipeline, slo_ms, damping, compress, duration_s, seed)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tidal-validate-") as tmp:
        work = workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        live = run_policy(setup, policy, work, on_ready=on_ready, on_progress=on_progress)
    load1 = os.getloadavg()
    summary = live_summary(live)
    if save_live is not None:
        args = {
            "trace": trace,
            "policy": policy,
            "pipeline": pipeline,
            "slo_ms": slo_ms,
            "damping": damping,
            "compress": compress,
            "duration_s": duration_s,
            "seed": seed,
        }
        doc: dict[str, Any] = {"args": args, "live": summary, "decisions": live.decisions}
        doc["loadavg"] = [list(load0), list(load1)]
        save_live.write_text(json.dumps(doc, default=str))
    cmp = simulate_live(setup, policy, seed, summary, live.decisions, cpu_quota)
    cmp.loadavg_start, cmp.loadavg_end = load0, load1
    return cmp


def revalidate(path: Path, cpu_quota: bool = VALIDATE_CPU_QUOTA) -> Comparison:
    """Re-simulate a live run saved by `validate(save_live=)` (its own arguments, summary,
    decision log and load averages) and compare, without running it again."""
    import json

    doc = json.loads(Path(path).read_text())
    a = doc["args"]
    setup = make_validate_setup(
        a["trace"],
        a["pipeline"],
        a["slo_ms"],
        a["damping"],
        a["compress"],
        a["duration_s"],
        a["seed"],
    )
    cmp = simulate_live(setup, a["policy"], a["seed"], doc["live"], doc["decisions"], cpu_quota)
    loads = doc.get("loadavg") or [[], []]
    cmp.loadavg_start, cmp.loadavg_end = tuple(loads[0]), tuple(loads[1])
    return cmp


def simulate_live(
    setup: DemoSetup,
    policy: str,
    seed: int,
    live: dict[str, Any],
    live_decisions: list[dict[str, Any]],
    cpu_quota: bool = VALIDATE_CPU_QUOTA,
) -> Comparison:
    """Simulate a live run (`live`: `live_summary`, with its decision log) and compare.
    `cpu_quota`: the compared simulation models the replicas' CPU quota
    (`SimConfig.cpu_quota`, the speed solved for by `fit_speed`); else the speed is the live
    measurements as they are, without the quota. The other one is reported too
    (`sim_other_quota_model`). Also: the simulation of the live run's own decisions
    (`replayed`, `validate_replay.ReplayPlanner`) and where the closed-loop simulated
    controller first chose another plan (`divergence`)."""
    from tidal.apps.validate_replay import ReplayPlanner, actions_differ, divergence
    from tidal.planners.base import create, resize_mode

    # The simulated batches run at the live machine's speed: the reference profile scaled
    # by the slowdown the live controller measured over the run (1.0 on an idle machine),
    # as it changed (the schedule), else its rate-weighted mean.
    slow = live_slowdown(live_decisions)
    lead = control_lead_s(live_decisions, setup, policy)
    names = [st.name for st in setup.pipeline.stages]
    window = planner_window_s(policy)
    points = schedule_points(live_decisions, names, lead, window)
    starts = live_start_times(live_decisions)
    quota_sim: dict[str, Any] | None = None
    sched: list[tuple[float, list[float]]] = []
    qsched: list[tuple[float, list[float]]] = []
    plain_decs: list[dict[str, Any]] = []
    if any(points.values()):
        ones = dict.fromkeys(names, 1.0)  # the noise's mean only; the schedule scales
        prof = scaled_profiles(setup, ones, start_s=starts)

        def run(sched: list[tuple[float, list[float]]]) -> tuple[Any, list[dict[str, Any]]]:
            decs: list[dict[str, Any]] = []
            out = simulate_same(
                setup, policy, seed, prof, lead_s=lead, slowdown=sched, decisions=decs
            )
            return out, decs

        t0 = next((float(d["t"]) for d in live_decisions if "t" in d), 0.0)
        held = held_slowdowns(live_decisions, t0 + lead, window)
        quota_sim, qsched, _ = fit_speed(points, held, names, window, run)
        sched = schedule_of(points, names)
    else:
        prof = scaled_profiles(setup, slow, start_s=starts)
    plain = simulate_same(
        setup,
        policy,
        seed,
        prof,
        lead_s=lead,
        slowdown=sched,
        cpu_quota=False,
        decisions=plain_decs,
    )
    sim = quota_sim if cpu_quota and quota_sim is not None else plain
    other = plain if sim is quota_sim else quota_sim
    raw = simulate_same(setup, policy, seed, lead_s=lead) if slow else None
    # The like-for-like comparison: the live plans, tick by tick, on the simulated data
    # plane (the same profile, speed schedule and quota model as the compared `sim`).
    live_planner = create(policy, **POLICY_KWARGS.get(policy, {}))
    replay = ReplayPlanner(
        str(live_planner.name),
        float(live_planner.interval_s),
        live_decisions,
        lead,
        resize_mode(live_planner),
    )
    replay_decs: list[dict[str, Any]] = []
    replayed = simulate_same(
        setup,
        policy,
        seed,
        prof,
        lead_s=lead,
        slowdown=qsched if sim is quota_sim else sched,
        cpu_quota=sim is quota_sim,
        planner=replay,
        decisions=replay_decs,
    )
    cmp = compare(live, sim)
    cmp.slowdown = slow
    cmp.start_s = starts
    cmp.control_lead_s = lead
    cmp.sim_profile_as_measured = raw
    cmp.sim_other_quota_model = other
    cmp.replayed = compare(live, replayed)
    cmp.replay_ticks = replay.used
    cmp.replay_actions_differ = actions_differ(live_decisions, replay_decs, lead)
    if sim is plain:
        div = divergence(live_decisions, plain_decs, lead)
        cmp.divergence = None if div is None else div.to_dict()
    return cmp
