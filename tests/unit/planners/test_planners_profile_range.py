"""Planners stay inside the cores a profile measured (`VariantProfile.cores_measured`) unless
the profile allows extrapolation: no plan gives a replica more or fewer cores than measured."""

from __future__ import annotations

import dataclasses

import pytest

from tidal.core.plan import Plan
from tidal.core.profile import VariantProfile
from tidal.planners import Capacity, StageCandidates, create
from tidal.planners.synthetic import synthetic_context, synthetic_variant

POLICIES = ("tidal", "themis", "sponge", "ipa", "infadapter")


def _ctx(v: VariantProfile, rps: float, slo_ms: float) -> object:
    base = synthetic_context(1, rps=rps, slo_ms=slo_ms, capacity=Capacity(1, 16.0))
    return dataclasses.replace(base, stages=(StageCandidates("s0", (v,)),))


def _cores(plan: Plan) -> list[float]:
    out = []
    for sp in plan.stages:
        for v in sp.variants:
            if sp.replicas_of(v.name) > 0:
                out.append(sp.cores_of(v.name))
    return out


@pytest.mark.parametrize("policy", POLICIES)
def test_no_plan_beyond_the_most_cores_measured(policy: str) -> None:
    v = synthetic_variant("v0", 0).model_copy(update={"cores_measured": (0.5, 2.0)})
    # a 40 ms SLO needs 4 cores per replica by the fit (p99 45 ms at 2 cores)
    for rps in (5.0, 50.0):
        plan, _ = create(policy).plan(_ctx(v, rps, 40.0))  # type: ignore[arg-type]
        assert max(_cores(plan)) <= 2.0 + 1e-9, (policy, plan)


@pytest.mark.parametrize("policy", ("tidal", "themis", "sponge"))
def test_extrapolation_is_opt_in(policy: str) -> None:
    v = synthetic_variant("v0", 0).model_copy(
        update={"cores_measured": (0.5, 2.0), "extrapolate": True}
    )
    plan, _ = create(policy).plan(_ctx(v, 5.0, 40.0))  # type: ignore[arg-type]
    assert plan.feasible and max(_cores(plan)) > 2.0, (policy, plan)


@pytest.mark.parametrize("policy", ("tidal", "sponge", "ipa", "infadapter"))
def test_no_plan_below_the_fewest_cores_measured(policy: str) -> None:
    v = synthetic_variant("v0", 0).model_copy(update={"cores_measured": (3.0, 8.0)})
    plan, _ = create(policy).plan(_ctx(v, 2.0, 1000.0))  # type: ignore[arg-type]
    assert min(_cores(plan)) >= 3.0 - 1e-9, (policy, plan)


def test_a_profile_without_a_recorded_range_is_not_bounded() -> None:
    v = synthetic_variant("v0", 0)
    assert v.core_bounds() is None
    plan, _ = create("tidal").plan(_ctx(v, 5.0, 40.0))  # type: ignore[arg-type]
    assert max(_cores(plan)) > 2.0
    with pytest.raises(ValueError, match="cores_measured"):
        v.model_copy(update={"cores_measured": (2.0, 1.0)}).model_validate(
            {**v.model_dump(), "cores_measured": (2.0, 1.0)}
        )
