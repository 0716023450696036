"""A scripted planner shared by the simulator tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tidal.core.plan import Plan
from tidal.planners.base import PlanContext


@dataclass
class Scripted:
    """A tiny planner: plan k of `plans` from time `times[k]` on (pure; no state)."""

    plans: list[Plan]
    times: list[float]
    name: str = "scripted"
    interval_s: float = 1.0
    resize_mode: str = "in_place"

    def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
        k = max(i for i, t in enumerate(self.times) if t <= ctx.now + 1e-9)
        return self.plans[k], None
