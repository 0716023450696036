"""LocalActuator's checks against a multi-node capacity (the Ray actuator inherits them)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from tidal.control.local import LocalActuator
from tidal.core.capacity import Capacity
from tidal.core.clock import SimClock
from tidal.core.plan import Plan
from tidal.planners.common import stage_plan


class _Gateway:
    """The gateway surface LocalActuator uses: stages, plan in force, limits, apply_plan."""

    def __init__(self) -> None:
        self.clock = SimClock()
        self.stages = {s: SimpleNamespace(allowed=["v"]) for s in ("a", "b")}
        self.config = SimpleNamespace(limits=SimpleNamespace(max_replicas_resolved=lambda: 64))
        self.plan = Plan(stages=(stage_plan("a", "v", 1, 0.5, 1), stage_plan("b", "v", 1, 0.5, 1)))
        self.applied: list[Plan] = []

    def current_plan(self) -> Plan:
        return self.plan

    async def apply_plan(self, plan: Plan, wait: bool = True) -> Plan:
        self.applied.append(plan)
        self.plan = plan
        return plan

    def metrics_snapshot(self) -> dict[str, Any]:
        return {}


def _apply(cap: Capacity, plan: Plan) -> tuple[bool, str, _Gateway]:
    gw = _Gateway()

    async def go() -> tuple[bool, str]:
        act = LocalActuator(gw, cap).apply(plan)
        await asyncio.sleep(0)
        return act.accepted, act.reason

    ok, reason = asyncio.run(go())
    return ok, reason, gw


def test_a_plan_over_one_node_but_within_the_cluster_is_accepted() -> None:
    # 3 nodes x 0.5 cores: 2 x 0.5 + 1 x 0.5 = 1.5 cores, one replica per node
    plan = Plan(stages=(stage_plan("a", "v", 2, 0.5, 1), stage_plan("b", "v", 1, 0.5, 1)))
    ok, reason, gw = _apply(Capacity(3, 0.5), plan)
    assert ok, reason
    assert gw.applied == [plan]


def test_a_plan_beyond_the_nodes_is_refused_naming_them() -> None:
    too_many = Plan(stages=(stage_plan("a", "v", 3, 0.5, 1), stage_plan("b", "v", 1, 0.5, 1)))
    ok, reason, gw = _apply(Capacity(3, 0.5), too_many)
    assert not ok and "3 x 0.5 cores" in reason and gw.applied == []
    too_big = Plan(stages=(stage_plan("a", "v", 1, 1.0, 1), stage_plan("b", "v", 1, 0.5, 1)))
    ok, reason, _ = _apply(Capacity(3, 0.5), too_big)  # a replica cannot span nodes
    assert not ok and "do not fit" in reason
