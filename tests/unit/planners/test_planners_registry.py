"""Registry, bad input, zero load and infeasible input for every policy."""

from __future__ import annotations

import dataclasses

import pytest

from tidal.core.errors import TidalError
from tidal.planners import Capacity, available, create
from tidal.planners.common import fits
from tidal.planners.synthetic import synthetic_context

ALL = [
    "fa2", "hpa", "infadapter", "ipa", "msp", "rayserve", "rim", "sponge", "static", "themis",
    "tidal", "vpa",
]  # fmt: skip


def test_registry_lists_every_policy() -> None:
    assert available() == sorted(ALL)


def test_unknown_policy_lists_valid_ones() -> None:
    with pytest.raises(TidalError, match=r"unknown policy 'nope'; valid policies: fa2, hpa"):
        create("nope")


@pytest.mark.parametrize("name", ALL)
def test_interval_and_name(name: str) -> None:
    p = create(name)
    assert p.name == name
    expected = {"sponge": 1, "themis": 1, "tidal": 1, "ipa": 10, "fa2": 10, "rim": 10,
                "infadapter": 30, "msp": 30, "hpa": 15, "vpa": 60, "rayserve": 10,
                "static": 60}  # fmt: skip
    assert p.interval_s == expected[name]


@pytest.mark.parametrize("name", ALL)
def test_zero_load_gives_minimum_plan(name: str) -> None:
    ctx = synthetic_context(3, rps=0.0)
    plan, _ = create(name).plan(ctx)
    assert plan.feasible, plan.reason
    # RIM's replicas are fixed (2); VPA's deployment has 2 (the updater's --min-replicas)
    reps = 2 if name in ("rim", "vpa") else 1
    for sp in plan.stages:
        assert sp.total_replicas == reps
        assert sp.batch == 1
    # the least cores each policy can give a replica: 0.5 on Themis' grid, 2 for InfAdapter
    floor = {"themis": 0.5, "tidal": 0.5, "infadapter": 2.0, "msp": 2.0}.get(name, 1.0)
    assert plan.total_cores == pytest.approx(3 * floor * reps)


@pytest.mark.parametrize("name", ALL)
def test_infeasible_input_returns_flagged_plan_not_exception(name: str) -> None:
    # 5000 req/s with a 40 ms SLO on one 2-core node: nothing can meet it
    ctx = synthetic_context(2, rps=5000.0, slo_ms=40.0, capacity=Capacity(1, 2.0))
    plan, _ = create(name).plan(ctx)
    assert len(plan.stages) == 2
    if name in ("themis", "sponge", "ipa", "infadapter", "fa2", "rim", "msp", "tidal"):
        assert not plan.feasible
        assert plan.reason


@pytest.mark.parametrize("name", ["themis", "sponge", "ipa", "infadapter", "fa2", "rim", "msp"])
def test_feasible_plans_fit_the_nodes(name: str) -> None:
    ctx = synthetic_context(3, rps=20.0, slo_ms=2000.0, capacity=Capacity(2, 8.0))
    plan, _ = create(name).plan(ctx)
    assert plan.feasible, plan.reason
    assert fits(plan, ctx.capacity)


@pytest.mark.parametrize("name", ALL)
def test_negative_slo_is_an_error_naming_it(name: str) -> None:
    ctx = dataclasses.replace(synthetic_context(1), slo_ms=-5.0)
    with pytest.raises(TidalError, match="SLO must be a positive number of ms, got -5"):
        create(name).plan(ctx)


def test_unknown_fixed_variant_is_named() -> None:
    ctx = synthetic_context(1)
    with pytest.raises(TidalError, match="unknown variant 'resnet9' for stage 's0'"):
        create("static", variant="resnet9").plan(ctx)
