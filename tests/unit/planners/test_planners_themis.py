"""Themis scenarios: vertical in place on a surge, joint DP once stable, new replicas before
shrinking cores, Amdahl cap."""

from __future__ import annotations

import dataclasses

from tidal.core.plan import Plan
from tidal.core.profile import LatencyFit, VariantProfile
from tidal.planners import Capacity, Pending, PlanContext, StageCandidates, create
from tidal.planners.synthetic import synthetic_context
from tidal.planners.themis import ThemisState, amdahl_cap


def ctx_at(base: PlanContext, now: float, hist: list[float], forecast: float, **kw) -> PlanContext:  # type: ignore[no-untyped-def]
    return dataclasses.replace(base, now=now, rate_history=tuple(hist), forecast=forecast, **kw)


def test_surge_scales_vertically_in_place_keeping_replicas() -> None:
    th = create("themis")
    base = synthetic_context(2, rps=20.0, slo_ms=1000.0, capacity=Capacity(4, 8.0))
    p0, st = th.plan(base)
    assert p0.feasible
    # surge: observed 20 -> 45 in the last seconds, forecast 45: not stable, plan too small
    surge = ctx_at(base, 1.0, [20.0] * 50 + [45.0] * 3, 45.0, current=p0, state=st)
    p1, st1 = th.plan(surge)
    assert p1.feasible
    assert [s.replicas for s in p1.stages] == [s.replicas for s in p0.stages]
    assert sum(s.cores for s in p1.stages) > sum(s.cores for s in p0.stages)
    assert th.resize_mode == "in_place"


def test_stable_load_solves_joint_problem_and_grows_replicas_before_shrinking_cores() -> None:
    th = create("themis")
    # l(b, c) = (10b + 20)/c + 50 ms: the fixed 50 ms per batch does not parallelize (Amdahl)
    v = VariantProfile(name="x", fit=LatencyFit(gamma=10.0, delta=0.0, epsilon=20.0, eta=50.0))
    base = dataclasses.replace(
        synthetic_context(1, rps=10.0, slo_ms=1000.0, capacity=Capacity(4, 4.0)),
        stages=(StageCandidates("s0", (v,)),),
    )
    p0, st = th.plan(base)
    assert (p0.stages[0].replicas, p0.stages[0].cores) == (1, 0.5)
    # surge to 100 req/s: vertical at once, same replica, 4x the cores
    p1, st = th.plan(ctx_at(base, 1.0, [10.0] * 30 + [100.0] * 2, 100.0, current=p0, state=st))
    assert (p1.stages[0].replicas, p1.stages[0].cores) == (1, 2.0)
    # load stable at 100: the joint optimum is 3 replicas x 0.5 cores (1.5 < 2 cores);
    # start the new replicas first, with the current 2.0 cores
    stable = ctx_at(base, 40.0, [100.0] * 40, 100.0, current=p1, state=st)
    p2, st2 = th.plan(stable)
    target = th.solve(stable, [v])
    assert target is not None and (target.stages[0].replicas, target.stages[0].cores) == (3, 0.5)
    assert isinstance(st2, ThemisState) and st2.target == target
    assert (p2.stages[0].replicas, p2.stages[0].cores) == (3, 2.0)
    starting = dataclasses.replace(
        stable, now=41.0, current=p2, state=st2, pending=Pending({"s0": 2})
    )
    p3, st3 = th.plan(starting)
    assert p3 == p2  # the new replica is still starting: keep the cores
    p4, _ = th.plan(dataclasses.replace(stable, now=42.0, current=p3, state=st3))
    assert p4 == target  # ready: shrink the cores to the optimum


def test_amdahl_cap_uses_profile_or_flattening_speedup() -> None:
    flat = VariantProfile(name="f", fit=LatencyFit(gamma=0.0, delta=0.0, epsilon=10.0, eta=50.0))
    # l(1,c) = 10/c + 50: 70, 60, 56.7, 55 ms at 0.5, 1, 1.5, 2 cores; 1.5 -> 2 gains 2.9% < 5%
    assert amdahl_cap(flat, Capacity(1, 16.0)) == 1.5
    capped = flat.model_copy(update={"max_useful_cores": 3.0})
    assert amdahl_cap(capped, Capacity(1, 16.0)) == 3.0
    assert amdahl_cap(capped, Capacity(1, 2.0)) == 2.0


def test_themis_infeasible_returns_fastest_flagged() -> None:
    ctx = synthetic_context(1, rps=10.0, slo_ms=5.0)
    plan, _ = create("themis").plan(ctx)
    assert not plan.feasible and "5 ms SLO" in plan.reason
    assert plan.stages[0].batch == 1


def test_themis_is_pure() -> None:
    ctx = synthetic_context(3, rps=33.0)
    a = create("themis").plan(ctx)
    b = create("themis").plan(ctx)
    assert a == b
    assert isinstance(a[0], Plan)
