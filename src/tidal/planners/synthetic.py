"""Synthetic variant profiles and plan contexts for benchmarks, tests and demos without a
measured profile.

Variant i of a family scales Sponge's fitted ResNet coefficients (REFERENCE.md: gamma=18.3,
delta=4.49, epsilon=45.5, eta=1.05 ms) by ``1 + 0.6*i``; accuracy and load time rise with i as
InfAdapter's ResNet-18..152 (.6976 .. .7831, 6.44 .. 8.52 s). These are NOT measurements: use
`tidal.profiling.load_reference()` for real figures.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tidal.core.plan import Plan
from tidal.core.profile import LatencyFit, ProfileSet, VariantProfile
from tidal.planners.base import Capacity, PlanContext, Planner, StageCandidates

_ACC = (0.6976, 0.7331, 0.7613, 0.7737, 0.7831)
_LOAD = (6.44, 6.79, 6.82, 7.77, 8.52)


def synthetic_variant(name: str, i: int) -> VariantProfile:
    """The i-th (0 = smallest) synthetic variant."""
    k = 1.0 + 0.6 * i
    acc = _ACC[i] if i < len(_ACC) else min(0.99, _ACC[-1] + 0.01 * (i - len(_ACC) + 1))
    load = _LOAD[i] if i < len(_LOAD) else _LOAD[-1] + 0.5 * (i - len(_LOAD) + 1)
    return VariantProfile(
        name=name,
        task="synthetic",
        accuracy=acc,
        accuracy_source="synthetic (InfAdapter's ResNet accuracies)",
        load_time_s=load,
        fit=LatencyFit(gamma=18.3 * k, delta=4.49 * k, epsilon=45.5 * k, eta=1.05, p99_ratio=1.2),
    )


def synthetic_profiles(n_variants: int = 5, prefix: str = "v") -> ProfileSet:
    """A ProfileSet of `n_variants` synthetic variants named prefix0.. ."""
    return ProfileSet(
        source="synthetic",
        variants={f"{prefix}{i}": synthetic_variant(f"{prefix}{i}", i) for i in range(n_variants)},
    )


def synthetic_context(
    n_stages: int,
    n_variants: int = 5,
    rps: float = 50.0,
    slo_ms: float = 1000.0,
    capacity: Capacity | None = None,
) -> PlanContext:
    """A steady-load context over `n_stages` stages of `n_variants` synthetic variants each."""
    ps = synthetic_profiles(n_variants)
    variants = tuple(ps.variants.values())
    return PlanContext(
        now=0.0,
        rate_history=(rps,) * 60,
        forecast=rps,
        stages=tuple(StageCandidates(f"s{j}", variants) for j in range(n_stages)),
        current=None,
        slo_ms=slo_ms,
        capacity=capacity or Capacity(nodes=max(4, n_stages), cores_per_node=16.0),
    )


def replay(planner: Planner, rates: list[float], ctx0: PlanContext) -> tuple[list[Plan], Any]:
    """Drive `planner` one decision per second over `rates` (req/s), from `ctx0`.

    Second t sees the rates so far (the first rate repeated 60 s before it, at most the last
    1,200 s), no forecast, the plan it returned at t-1 as the current plan and its state passed
    back. Returns every plan, in order, and the final state. Pure and deterministic."""
    plan: Plan | None = None
    st: Any = None
    hist = [rates[0]] * 60
    plans: list[Plan] = []
    for t, r in enumerate(rates):
        hist = (hist + [r])[-1200:]
        ctx = dataclasses.replace(ctx0, now=float(t), rate_history=tuple(hist), forecast=None,
                                  current=plan, state=st)  # fmt: skip
        plan, st = planner.plan(ctx)
        plans.append(plan)
    return plans, st
