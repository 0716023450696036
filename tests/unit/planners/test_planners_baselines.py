"""Scenario tests for the baselines not covered by the wrapper traces: VPA (Recreate pays a
cold start, InPlaceOrRecreate does not), FA2, RIM, MSP, static; and plan diffs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tidal.core.plan import Plan
from tidal.planners import Governed, StageObservation, create, resize_mode
from tidal.planners.actuation import RECREATE, RESIZE, START, STOP, changes, cold_starts
from tidal.planners.base import Capacity
from tidal.planners.baselines.vpa import (
    VPA,
    StageHistory,
    VpaState,
    bucket_of,
    confidence_days,
    percentile,
)
from tidal.planners.common import stage_plan
from tidal.planners.synthetic import synthetic_context


def vpa_trace(mode: str, usage: float, steps: int) -> list[Plan]:
    g = Governed(create("vpa", mode=mode))
    base = synthetic_context(1)
    plan, state, out = None, None, []
    for k in range(steps):
        ctx = dataclasses.replace(
            base, now=60.0 * k, current=plan, state=state,
            observations=(StageObservation("s0", usage_samples=(usage,) * 60),),
        )  # fmt: skip
        plan, state = g.plan(ctx)
        out.append(plan)
    return out


def test_vpa_recreate_resizes_to_p90_plus_margin_and_pays_cold_start() -> None:
    plans = vpa_trace("Recreate", usage=2.0, steps=2)
    first, second = plans[0].stages[0], plans[1].stages[0]
    assert first.replicas == 2  # VPA's default deployment: 2 replicas (updater --min-replicas)
    # stage-wide 2.0 cores over 2 replicas: p90 lands in 1.0's bucket; x1.15 margin
    assert first.cores == pytest.approx(round(percentile_of(1.0) * 1.15, 3))
    assert second.cores == first.cores  # inside [lower, upper]: no further update
    planner = create("vpa")
    cs = changes(Plan.single("s0", "v0", 2, 1.0, 1), plans[0], resize_mode(planner))
    assert [c.kind for c in cs] == [RECREATE]
    assert cold_starts(cs) == 2  # both replicas are recreated


def percentile_of(x: float) -> float:
    w = np.zeros(176)
    w[bucket_of(x)] = 1.0
    return percentile(w, 0.9)


def vpa_steps(planner_opts: dict[str, object], cur: Plan, usage: float, minutes: int) -> Plan:
    """`minutes` decisions (one a minute) of VPA with `cur` in force and `usage` cores used
    per replica; the last plan."""
    vpa = create("vpa", **planner_opts)
    base = synthetic_context(1)
    reps = cur.stages[0].replicas
    plan, state = cur, None
    for k in range(minutes):
        obs = (StageObservation("s0", usage_samples=(usage * reps,) * 60),)
        ctx = dataclasses.replace(base, now=60.0 * (k + 1), current=plan, state=state,
                                  observations=obs)  # fmt: skip
        plan, state = vpa.plan(ctx)
    return plan


def test_vpa_confidence_multiplier_keeps_a_pod_at_its_size_with_20_minutes_of_history() -> None:
    big = Plan.single("s0", "v0", 2, 4.0, 1)  # 2 replicas x 4 cores, each using 0.5
    kept = vpa_steps({}, big, usage=0.5, minutes=20)
    assert kept.stages[0].cores == 4.0  # upper bound x (1 + 1/(20 min in days)) ~ 73x
    shrunk = vpa_steps({"confidence": False}, big, usage=0.5, minutes=20)
    assert shrunk.stages[0].cores < 1.0  # without the multiplier it would shrink at once


def test_vpa_confidence_multipliers_follow_the_recommender_formula() -> None:
    vpa = VPA()
    w = np.zeros(176)
    w[bucket_of(0.5)] = 1.0
    week = StageHistory(tuple(w), 0.0, 7 * 86400.0, 7 * 1440.0)
    lo, tgt, up = vpa.recommend(week)
    assert up == pytest.approx(percentile(w, 0.95) * 1.15 * (1 + 1 / 7))  # ~1.14x
    assert lo == pytest.approx(percentile(w, 0.5) * 1.15 * (1 + 0.001 / 7) ** -2)
    assert tgt == pytest.approx(percentile(w, 0.9) * 1.15)
    assert confidence_days(0.0, 20 * 60.0, 1e6) == pytest.approx(20 / 1440)  # span bounds it
    assert confidence_days(0.0, 86400.0, 720.0) == pytest.approx(0.5)  # samples bound it
    none = StageHistory(tuple(w), None, None, 0.0)
    assert vpa.recommend(none)[2] == float("inf")  # no history: never evict to shrink
    # a week of history: a 4-core pod using 0.5 is outside the bounds and shrinks
    big = Plan.single("s0", "v0", 2, 4.0, 1)
    obs = (StageObservation("s0", usage_samples=(1.0,)),)
    ctx = dataclasses.replace(
        synthetic_context(1), now=7 * 86400.0, current=big, state=VpaState(0.0, {"s0": week}),
        observations=obs,
    )  # fmt: skip
    plan, _ = vpa.plan(ctx)
    assert plan.stages[0].cores < 1.0


def test_vpa_updater_does_not_evict_a_single_replica() -> None:
    one = Plan.single("s0", "v0", 1, 4.0, 1)
    kept = vpa_steps({"confidence": False}, one, usage=0.5, minutes=5)
    assert kept.stages[0].cores == 4.0  # Recreate: 1 < --min-replicas 2, no eviction
    two = Plan.single("s0", "v0", 2, 4.0, 1)
    assert vpa_steps({"confidence": False}, two, usage=0.5, minutes=5).stages[0].cores < 1.0
    # in place there is no eviction, so the guard does not apply
    inplace = vpa_steps({"confidence": False, "mode": "InPlaceOrRecreate"}, one, 0.5, 5)
    assert inplace.stages[0].cores < 1.0


def test_vpa_in_place_mode_resizes_without_cold_start() -> None:
    plans = vpa_trace("InPlaceOrRecreate", usage=0.3, steps=1)
    planner = create("vpa", mode="InPlaceOrRecreate")
    cs = changes(Plan.single("s0", "v0", 2, 1.0, 1), plans[0], resize_mode(planner))
    assert [c.kind for c in cs] == [RESIZE]
    assert cold_starts(cs) == 0
    assert plans[0].stages[0].cores < 1.0  # scaled down to ~0.3 x 1.15


def test_changes_start_and_stop() -> None:
    old = Plan.single("s0", "v0", 3, 1.0, 1)
    new = Plan.single("s0", "v1", 2, 1.0, 1)
    kinds = sorted((c.variant, c.kind, c.count) for c in changes(old, new))
    assert kinds == [("v0", STOP, 3), ("v1", START, 2)]
    assert cold_starts(changes(None, new)) == 2


def test_fa2_fixes_the_variant_and_minimizes_replicas() -> None:
    ctx = synthetic_context(2, rps=60.0, slo_ms=1500.0)
    low, _ = create("fa2").plan(ctx)
    high, _ = create("fa2", variant="high").plan(ctx)
    assert {sp.variants[0].name for sp in low.stages} == {"v0"}
    assert {sp.variants[0].name for sp in high.stages} == {"v4"}
    assert all(sp.cores == 1.0 for sp in low.stages)
    assert low.total_cores <= high.total_cores


def test_rim_keeps_replicas_and_tunes_variants() -> None:
    for rps in (5.0, 30.0):
        plan, _ = create("rim", replicas=3).plan(synthetic_context(2, rps=rps, slo_ms=2000.0))
        assert plan.feasible
        assert [sp.replicas for sp in plan.stages] == [3, 3]
    lo, _ = create("rim", replicas=3).plan(synthetic_context(1, rps=1.0, slo_ms=2000.0))
    hi, _ = create("rim", replicas=3).plan(synthetic_context(1, rps=40.0, slo_ms=2000.0))
    acc = {f"v{i}": i for i in range(5)}
    assert acc[lo.stages[0].variants[0].name] >= acc[hi.stages[0].variants[0].name]


def test_msp_serves_one_variant_infadapter_may_mix() -> None:
    ctx = synthetic_context(1, rps=60.0, slo_ms=1000.0)
    msp, _ = create("msp").plan(ctx)
    assert len(msp.stages[0].variants) == 1
    ia, _ = create("infadapter").plan(ctx)
    assert sum(v.weight for v in ia.stages[0].variants) == pytest.approx(1.0)


def test_infadapter_scales_down_only_after_four_lower_forecasts() -> None:
    ia = create("infadapter")
    ctx = synthetic_context(1, rps=80.0)
    plan, st = ia.plan(ctx)
    high_cores = plan.total_cores
    totals = []
    for k in range(1, 6):  # a new (distinct) lower forecast at every decision
        fc = 10.0 + 0.5 * k
        ctx2 = dataclasses.replace(ctx, now=30.0 * k, forecast=fc, current=plan, state=st)
        plan, st = ia.plan(ctx2)
        totals.append(plan.total_cores)
    assert totals[:3] == [high_cores] * 3  # 1st..3rd lower forecasts: keep
    assert totals[3] < high_cores  # 4th in a row: scale down


def test_infadapter_counts_distinct_forecasts_not_decisions() -> None:
    """The LSTM is refreshed every 60 s and InfAdapter decides every 30 s: the same forecast
    seen at two decisions is one prediction, so 4 lower predictions take 8 decisions."""
    ia = create("infadapter")
    ctx = synthetic_context(1, rps=80.0)
    plan, st = ia.plan(ctx)
    high_cores = plan.total_cores
    totals = []
    for k in range(1, 9):
        fc = 10.0 + 0.5 * ((k + 1) // 2)  # each forecast held for two decisions
        ctx2 = dataclasses.replace(ctx, now=30.0 * k, forecast=fc, current=plan, state=st)
        plan, st = ia.plan(ctx2)
        totals.append(plan.total_cores)
    assert totals[:6] == [high_cores] * 6  # 3 distinct lower forecasts over 6 decisions
    assert totals[6] < high_cores  # the 4th distinct one: scale down


def test_infadapter_budget_defaults_to_20_cores_capped_at_the_cluster() -> None:
    ia = create("infadapter")
    big = synthetic_context(1, rps=100.0, capacity=Capacity(4, 16.0))
    plan, _ = ia.plan(big)
    assert plan.total_cores <= 20.0 + 1e-9
    whole, _ = create("infadapter", budget=None).plan(big)
    assert whole.total_cores > 20.0  # the whole 64-core cluster as budget: more than twice


def test_static_never_changes() -> None:
    s = create("static", replicas=2, cores=1.5, batch=4)
    p1, _ = s.plan(synthetic_context(2, rps=0.0))
    p2, _ = s.plan(synthetic_context(2, rps=500.0))
    assert p1 == p2
    assert p1.stages[0] == stage_plan("s0", "v0", 2, 1.5, 4)
