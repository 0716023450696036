"""Scenario tests for the baselines not covered by the wrapper traces: VPA (Recreate pays a
cold start, InPlaceOrRecreate does not), FA2, RIM, MSP, static; and plan diffs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tidal.core.plan import Plan
from tidal.planners import Governed, StageObservation, create, resize_mode
from tidal.planners.actuation import RECREATE, RESIZE, START, STOP, changes, cold_starts
from tidal.planners.baselines.vpa import bucket_of, percentile
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
    # histogram of 2.0-core samples: p90 lands in 2.0's bucket; x1.15 margin
    assert first.cores == pytest.approx(round(percentile_of(2.0) * 1.15, 3))
    assert second.cores == first.cores  # inside [lower, upper]: no further update
    planner = create("vpa")
    cs = changes(Plan.single("s0", "v0", 1, 1.0, 1), plans[0], resize_mode(planner))
    assert [c.kind for c in cs] == [RECREATE]
    assert cold_starts(cs) == 1


def percentile_of(x: float) -> float:
    w = np.zeros(176)
    w[bucket_of(x)] = 1.0
    return percentile(w, 0.9)


def test_vpa_in_place_mode_resizes_without_cold_start() -> None:
    plans = vpa_trace("InPlaceOrRecreate", usage=0.3, steps=1)
    planner = create("vpa", mode="InPlaceOrRecreate")
    cs = changes(Plan.single("s0", "v0", 1, 1.0, 1), plans[0], resize_mode(planner))
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
    for k in range(1, 6):
        ctx2 = dataclasses.replace(ctx, now=30.0 * k, forecast=10.0, current=plan, state=st)
        plan, st = ia.plan(ctx2)
        totals.append(plan.total_cores)
    assert totals[:3] == [high_cores] * 3  # 1st..3rd lower forecasts: keep
    assert totals[3] < high_cores  # 4th in a row: scale down


def test_static_never_changes() -> None:
    s = create("static", replicas=2, cores=1.5, batch=4)
    p1, _ = s.plan(synthetic_context(2, rps=0.0))
    p2, _ = s.plan(synthetic_context(2, rps=500.0))
    assert p1 == p2
    assert p1.stages[0] == stage_plan("s0", "v0", 2, 1.5, 4)
