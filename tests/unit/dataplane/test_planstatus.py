"""GET /admin/plan's body: target, in_force and pending reported separately."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tidal.core.plan import Plan, StagePlan, VariantWeight
from tidal.dataplane.planstatus import plan_status


@dataclass
class Rep:
    cores: float


@dataclass
class Group:
    ready_reps: list[Rep]
    n_starting: int = 0
    max_batch: int = 4

    def ready(self) -> list[Rep]:
        return self.ready_reps

    def starting(self) -> int:
        return self.n_starting


@dataclass
class Stage:
    groups: dict[str, Group]
    w: dict[str, float] = field(default_factory=dict)

    @property
    def weights(self) -> dict[str, float]:
        return self.w


class Gw:
    """The part of the live Gateway that plan_status reads (stages, groups, the plan)."""

    def __init__(self, plan: Plan, stages: dict[str, Stage]) -> None:
        self.plan, self.stages = plan, stages

    def current_plan(self) -> Plan:
        return self.plan


def two_variant_plan() -> Plan:
    vs = (VariantWeight(name="a", weight=0.75), VariantWeight(name="b", weight=0.25))
    return Plan(stages=(StagePlan(stage="s", variants=vs, replicas=1, cores=1.0, batch=4),))


def test_pending_replica_and_renormalised_weights() -> None:
    stage = Stage({"a": Group([Rep(1.0)]), "b": Group([], n_starting=1)}, {"a": 0.75, "b": 0.25})
    doc: dict[str, Any] = plan_status(Gw(two_variant_plan(), {"s": stage}))
    assert doc["stages"] == doc["target"]["stages"]  # a Plan reader still works
    (s,) = doc["in_force"]
    a, b = s["variants"]
    assert a["replicas"] == 1 and a["weight"] == 1.0 and "renormalised" in a["reason"]
    assert b["replicas"] == 0 and b["weight"] == 0.0 and "no ready replica" in b["reason"]
    assert doc["pending"] == [{"stage": "s", "variants": [{"name": "b", "replicas": 1}]}]
    assert doc["converged"] is False


def test_converged_when_what_runs_is_the_target() -> None:
    stage = Stage({"a": Group([Rep(1.0)]), "b": Group([Rep(1.0)])}, {"a": 0.75, "b": 0.25})
    doc = plan_status(Gw(two_variant_plan(), {"s": stage}))
    assert doc["converged"] is True and doc["pending"] == []
    assert [v["weight"] for v in doc["in_force"][0]["variants"]] == [0.75, 0.25]


def test_refused_resize_is_not_converged() -> None:
    stage = Stage({"a": Group([Rep(0.5)]), "b": Group([Rep(1.0)])}, {"a": 0.75, "b": 0.25})
    doc = plan_status(Gw(two_variant_plan(), {"s": stage}))
    assert doc["converged"] is False
    assert doc["in_force"][0]["variants"][0]["cores"] == [0.5]
