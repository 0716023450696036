"""Governed: decision interval, bounds, HPA's stabilization and scale-up limit, Ray Serve's
delays and cool-downs, as exact (time, replicas) traces."""

from __future__ import annotations

import dataclasses

import pytest

from tidal.core.errors import TidalError
from tidal.core.plan import Plan
from tidal.planners import (
    RESIZE_IN_PLACE,
    RESIZE_RECREATE,
    Bounds,
    Governance,
    Governed,
    PlanContext,
    StageObservation,
    create,
    resize_mode,
)
from tidal.planners.baselines.hpa import HPA
from tidal.planners.synthetic import synthetic_context


def run(planner: Governed, steps: list[tuple[float, dict[str, float]]]) -> list[tuple[float, int]]:
    """Call `planner` at each (time, observation fields) and return (time, replicas)."""
    base = synthetic_context(1)
    plan: Plan | None = None
    state = None
    trace = []
    for t, obs in steps:
        ctx = dataclasses.replace(
            base,
            now=t,
            current=plan,
            state=state,
            observations=(StageObservation("s0", **obs),),  # type: ignore[arg-type]
        )
        plan, state = planner.plan(ctx)
        trace.append((t, plan.stages[0].replicas))
    return trace


def test_hpa_scale_up_then_300s_stabilization_after_drop() -> None:
    hpa = Governed(create("hpa"))
    assert hpa.interval_s == 15
    steps = [(0.0, {"cpu_utilization": 0.7})]  # initial: 1 replica
    steps += [(15.0 * k, {"cpu_utilization": 2.8}) for k in range(1, 3)]  # 4x the target
    steps += [(15.0 * k, {"cpu_utilization": 0.1}) for k in range(3, 26)]  # load drops
    trace = dict(run(hpa, steps))
    assert trace[0.0] == 1
    assert trace[15.0] == 4  # ceil(1 * 2.8/0.7) = 4 <= max(1+4, 2*1)
    assert trace[30.0] == 8  # ceil(4 * 2.8/0.7) = 16, limited to max(4 + 4 pods, 4 * 200%) = 8
    # after the drop HPA recommends ceil(8 * 0.1/0.7) = 2, but the last 300 s held 16 (t=30)
    assert all(trace[15.0 * k] == 8 for k in range(3, 22))
    assert trace[330.0] == 2  # t=30 left the window (Kubernetes: strictly newer than now-300)


def test_hpa_tolerance_keeps_replicas() -> None:
    hpa = HPA()
    assert hpa.desired(4, 0.75) == 4  # |0.75/0.7 - 1| = 7% <= 10%
    assert hpa.desired(4, 0.8) == 5


def test_between_decisions_the_plan_in_force_is_kept() -> None:
    hpa = Governed(create("hpa"))
    trace = run(hpa, [(0.0, {"cpu_utilization": 0.7}), (5.0, {"cpu_utilization": 3.0})])
    assert trace == [(0.0, 1), (5.0, 1)]


def test_rayserve_upscale_waits_30s_then_applies_latest() -> None:
    rs = Governed(create("rayserve"))
    assert rs.interval_s == 10
    steps = [(0.0, {"ongoing": 2.0})]
    steps += [(10.0 * k, {"ongoing": 8.0}) for k in range(1, 6)]
    trace = dict(run(rs, steps))
    assert trace[0.0] == 1
    assert trace[10.0] == trace[20.0] == trace[30.0] == 1  # wanted since t=10: wait 30 s
    assert trace[40.0] > 1  # 30 s after t=10


def test_rayserve_downscale_waits_600s() -> None:
    rs = Governed(create("rayserve", initial_replicas=4), bounds=Bounds(min_replicas=1))
    steps = [(0.0, {"ongoing": 2.0})] + [(10.0 * k, {"ongoing": 0.1}) for k in range(1, 63)]
    trace = dict(run(rs, steps))
    assert trace[600.0] == 4
    assert trace[610.0] == 1


def test_bounds_clamp_replicas_cores_batch() -> None:
    g = Governed(create("static", replicas=9, cores=4.0, batch=32), bounds=Bounds(
        max_replicas=3, max_cores=2.0, max_batch=8))  # fmt: skip
    plan, _ = g.plan(synthetic_context(1))
    sp = plan.stages[0]
    assert (sp.replicas, sp.cores, sp.batch) == (3, 2.0, 8)


def test_cooldown_blocks_second_scale_up() -> None:
    hpa = Governed(create("hpa"), governance=Governance(cooldown_up_s=60.0))
    steps = [(0.0, {"cpu_utilization": 0.7}), (15.0, {"cpu_utilization": 1.4}),
             (30.0, {"cpu_utilization": 1.4}), (75.0, {"cpu_utilization": 1.4})]  # fmt: skip
    assert run(hpa, steps) == [(0.0, 1), (15.0, 2), (30.0, 2), (75.0, 4)]


def test_bad_bounds_name_the_values() -> None:
    with pytest.raises(TidalError, match=r"max_replicas \(2\) must be >= min_replicas \(3\)"):
        Bounds(min_replicas=3, max_replicas=2)
    with pytest.raises(TidalError, match="governance: interval_s must be >= 0, got -1"):
        Governance(interval_s=-1)


def test_infeasible_capacity_is_flagged_by_wrapper() -> None:
    g = Governed(create("static", replicas=9, cores=2.0))  # 18 cores on one 16-core node
    ctx = synthetic_context(1)
    ctx = dataclasses.replace(ctx, capacity=dataclasses.replace(ctx.capacity, nodes=1))
    plan, _ = g.plan(ctx)
    assert not plan.feasible and "do not fit" in plan.reason


def test_resize_modes() -> None:
    assert resize_mode(create("vpa")) == RESIZE_RECREATE
    assert resize_mode(create("vpa", mode="InPlaceOrRecreate")) == RESIZE_IN_PLACE
    assert resize_mode(Governed(create("vpa"))) == RESIZE_RECREATE
    assert resize_mode(create("sponge")) == RESIZE_IN_PLACE
    assert resize_mode(create("hpa")) == RESIZE_IN_PLACE


def test_governed_passes_inner_state_through() -> None:
    g = Governed(create("vpa"))
    ctx: PlanContext = dataclasses.replace(
        synthetic_context(1), observations=(StageObservation("s0", cpu_usage_cores=0.5),)
    )
    _, st = g.plan(ctx)
    assert st.inner is not None and sum(st.inner.hist["s0"].weights) > 0


def test_bounds_apply_per_variant_for_infadapter() -> None:
    g = Governed(create("infadapter"), bounds=Bounds(max_replicas=1, max_cores=4.0))
    plan, _ = g.plan(synthetic_context(1, rps=80.0))
    for v in plan.stages[0].variants:
        assert v.replicas is not None and v.replicas <= 1
        assert v.cores is not None and v.cores <= 4.0
