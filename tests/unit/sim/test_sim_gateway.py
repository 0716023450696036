"""Options that model a live gateway (`tidal validate`): its admission and batcher predicting
with another profile than the simulated service times, the config's initial plan with the
planner's first plan paying its cold start, and infeasible plans left unapplied."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sim_scripted import Scripted

from tidal.core.errors import TidalError
from tidal.core.pipeline import PipelineSpec
from tidal.core.plan import Plan
from tidal.core.profile import LatencyFit, ProfileSet, VariantProfile
from tidal.sim.config import SimConfig, sim_scheduler
from tidal.sim.engine import simulate


def profiles(gamma: float) -> ProfileSet:
    fit = LatencyFit(gamma=gamma, delta=0.0, epsilon=0.0, eta=1.0, p99_ratio=1.2)
    return ProfileSet(
        variants={
            n: VariantProfile(name=n, accuracy=0.8, load_time_s=5.0, resize_s=0.5, fit=fit)
            for n in ("a", "x")
        }
    )


ONE = PipelineSpec.model_validate(
    {"name": "one", "stages": [{"name": "s", "task": "t", "variants": ["a"]}]}
)
TWO = PipelineSpec.model_validate(
    {
        "name": "two",
        "stages": [
            {"name": "s1", "task": "t", "variants": ["a"]},
            {"name": "s2", "task": "t", "variants": ["x"]},
        ],
    }
)


def test_initial_plan_is_warm_and_the_first_plan_pays_its_cold_start() -> None:
    three = Plan.single("s", "a", 3, 1.0, 1)
    rates = np.full(20, 5.0)
    warm = simulate(ONE, profiles(20.0), rates, Scripted([three], [0.0]), SimConfig(drain_s=0))
    assert warm.replica_starts == 0
    r = simulate(
        ONE, profiles(20.0), rates, Scripted([three], [0.0]), SimConfig(drain_s=0),
        initial_plan=Plan.single("s", "a", 1, 1.0, 1),
    )  # fmt: skip
    assert r.replica_starts == 2 and r.requests == warm.requests


def test_skip_infeasible_keeps_a_plan_that_does_not_fit() -> None:
    small = Plan.single("s", "a", 1, 1.0, 1)
    big = Plan.single("s", "a", 2, 1.0, 1).model_copy(update={"feasible": False})
    rates = np.full(20, 5.0)
    cfg = SimConfig(drain_s=0, cores_per_node=1.5)  # the flagged 2-core plan does not fit
    kept = simulate(ONE, profiles(20.0), rates, Scripted([small, big], [0.0, 10.0]), cfg)
    assert kept.core_seconds == pytest.approx(20) and kept.infeasible_plans > 0
    # --best-effort: handed to the actuator, whose second replica stays pending (no cores)
    cfg = cfg.model_copy(update={"skip_infeasible": False})
    tried = simulate(ONE, profiles(20.0), rates, Scripted([small, big], [0.0, 10.0]), cfg)
    assert tried.core_seconds == pytest.approx(20) and tried.requests == kept.requests
    # a flagged plan that fits is applied by default (the planner's best effort)
    roomy = SimConfig(drain_s=0, cores_per_node=2.0)
    fit = simulate(ONE, profiles(20.0), rates, Scripted([small, big], [0.0, 10.0]), roomy)
    assert fit.core_seconds == pytest.approx(10 + 2 * 10) and fit.infeasible_plans > 0


def run(
    predict: ProfileSet | None,
    gateway: bool = True,
    pipeline: PipelineSpec = ONE,
    adapt: bool = False,
    late_target: float = 0.0,
) -> Any:
    plan = Plan(
        stages=tuple(
            Plan.single(st.name, st.variants[0], 1, 1.0, 4).stages[0] for st in pipeline.stages
        )
    )
    # The gateway's scheduler wakes at the head's deadline (expire_timer).
    sched = sim_scheduler(expire_timer=gateway, adapt_latency=adapt, late_target=late_target)
    cfg = SimConfig(
        slo_ms=150.0, drain_s=2.0, mode="reference", gateway=gateway, seed=3, scheduler=sched
    )
    return simulate(
        pipeline, profiles(40.0), np.full(20, 40.0), Scripted([plan], [0.0]), cfg,
        predict_profiles=predict,
    )  # fmt: skip


def test_gateway_admission_predicts_with_the_predict_profile() -> None:
    """Saturated (40 req/s on ~30 req/s): an optimistic prediction admits what then misses
    its deadline (late, expired), a pessimistic one refuses more."""
    same = run(None)
    optimistic = run(profiles(10.0))
    pessimistic = run(profiles(80.0))
    assert same.requests == optimistic.requests == pessimistic.requests
    missed = lambda r: r.counts["late"] + r.counts["expired"]  # noqa: E731
    assert missed(optimistic) > missed(same)
    assert pessimistic.counts["refused"] > same.counts["refused"]
    # Learning the service rate from measured batches (the live gateway's adapt_latency)
    # undoes most of the optimism.
    assert missed(run(profiles(10.0), adapt=True)) < missed(optimistic)


def test_the_feedback_margin_learns_from_the_simulated_answers_as_live() -> None:
    """The live stage tells its lane when each answer was taken up (`on_answered`), and the
    lane's feedback margin (`late_target`) stretches its admission until that share of the
    admitted is late; the simulator calls it too. Optimistic prediction (10 ms predicted,
    40 ms served) at saturation: with the margin, fewer admitted requests miss, more are
    refused at arrival; without the calls (before) the margin changed nothing."""
    base = run(profiles(10.0))
    margin = run(profiles(10.0), late_target=0.005)
    missed = lambda r: r.counts["late"] + r.counts["expired"]  # noqa: E731
    assert margin.requests == base.requests
    assert missed(margin) < 0.7 * missed(base)
    assert margin.counts["refused"] > base.counts["refused"]
    # and on a two-stage pipeline (each stage's lane answers its own requests)
    two = run(profiles(10.0), pipeline=TWO, late_target=0.005)
    assert missed(two) < missed(run(profiles(10.0), pipeline=TWO))


def test_gateway_mode_runs_pipelines_and_only_in_reference_mode() -> None:
    r = run(profiles(20.0), pipeline=TWO)
    assert r.requests == sum(r.counts.values()) and r.counts["ok"] > 0
    with pytest.raises(TidalError, match="reference"):
        simulate(ONE, profiles(20.0), np.full(5, 1.0), "hpa", SimConfig(mode="fast", gateway=True))


def test_control_lead_shifts_the_planner_ticks() -> None:
    """Interval 10 s, lead 3 s: decisions at 0, 7, 17, 27, 37 instead of 0, 10, 20, 30; a
    plan due from t=12 applies at 17 instead of 20."""
    small = Plan.single("s", "a", 1, 1.0, 1)
    big = Plan.single("s", "a", 2, 1.0, 1)
    planner = Scripted([small, big], [0.0, 12.0], interval_s=10.0)
    rates = np.full(40, 1.0)
    cfg = SimConfig(drain_s=0, resize_s=0.0, mode="reference")
    r = simulate(ONE, profiles(20.0), rates, planner, cfg)
    assert r.core_seconds == pytest.approx(20 + 2 * 20) and r.decisions == 4
    r = simulate(
        ONE, profiles(20.0), rates, planner, cfg.model_copy(update={"control_lead_s": 3.0})
    )
    assert r.core_seconds == pytest.approx(17 + 2 * 23) and r.decisions == 5


def test_slowdown_schedule_scales_the_batches_from_its_times_on(tmp_path: Path) -> None:
    """No noise, batch 1 of 21 ms, a trickle (a request rarely waits): x3 from t = 10 s on,
    so the requests served alone take 21 ms before and 63 ms after (the schedulers still
    predict 20 ms)."""
    plan = Plan.single("s", "a", 1, 1.0, 1)
    rates = np.full(20, 2.0)
    cfg = SimConfig(drain_s=2.0, mode="reference", noise=False, seed=2)
    out = tmp_path / "rows.csv"
    simulate(
        ONE, profiles(20.0), rates, Scripted([plan], [0.0]), cfg, csv_path=out,
        slowdown=[(0.0, [1.0]), (10.0, [3.0])],
    )  # fmt: skip
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) > 20
    before = {round(float(r["latency_ms"])) for r in rows if float(r["end_s"]) < 10.0}
    after = {round(float(r["latency_ms"])) for r in rows if float(r["arrival_s"]) > 10.0}
    assert min(before) == 21 and min(after) == 63  # l(1, 1) = 20 + 1 ms
    with pytest.raises(TidalError, match="slowdown"):
        simulate(ONE, profiles(20.0), rates, Scripted([plan], [0.0]), cfg,
                 slowdown=[(5.0, [1.0]), (1.0, [2.0])])  # fmt: skip
