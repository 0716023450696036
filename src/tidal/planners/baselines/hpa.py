"""`hpa`: the Kubernetes Horizontal Pod Autoscaler (autoscaling/v2), CPU utilization metric.

Faithful (kubernetes.io "Horizontal Pod Autoscaling", algorithm details):
- every 15 s (``--horizontal-pod-autoscaler-sync-period``):
  ``desired = ceil(current * utilization / target)``, unchanged when
  ``|utilization/target - 1| <= 0.1`` (the 10% tolerance);
- scale-down stabilization window 300 s (highest recommendation of the last 5 min) and the
  default scale-up policy: at most +max(4 pods, 100%) per 15 s. Both are applied by
  `tidal.planners.wrapper.Governed` from this class's ``governance`` (not re-implemented here).
Reconstructed: Kubernetes has no default target; we use 70% (`target_utilization`). Pods still
starting count in `current` (Kubernetes treats unready pods as 0% on scale-up, which only
lowers the ratio further). Fixed variant, cores per replica and batch (HPA scales replicas only).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from tidal.core.errors import TidalError
from tidal.core.plan import Plan
from tidal.planners.base import PlanContext, PlannerOptions, VariantChoice, register
from tidal.planners.common import check_context, current_stage, pick_variants, stage_plan
from tidal.planners.wrapper import Governance


class HpaOptions(PlannerOptions):
    """Options of `hpa` (defaults: Kubernetes' documented ones, kubernetes.io HPA page)."""

    target_utilization: float = Field(
        0.7, gt=0, le=1, description="Target CPU utilisation (k8s has no default; 70%)."
    )
    tolerance: float = Field(
        0.1, ge=0, le=1, description="No change within this ratio band (k8s 0.1)."
    )
    cores: float = Field(1.0, gt=0, le=1024, description="Cores of each replica (fixed).")
    batch: int = Field(1, ge=1, le=256, description="Batch size (fixed).")
    initial_replicas: int = Field(1, ge=1, le=10**4, description="Replicas before any metric.")
    variant: VariantChoice = Field(None, description="Fixed variant per stage.")


@register("hpa")
class HPA:
    """Kubernetes HPA on CPU utilization (per stage)."""

    name = "hpa"
    interval_s = 15.0
    Options = HpaOptions
    governance = Governance(
        scale_down_stabilization_s=300.0, scale_up_limit_pods=4, scale_up_limit_percent=100.0
    )

    def __init__(
        self,
        target_utilization: float = 0.7,
        tolerance: float = 0.1,
        cores: float = 1.0,
        batch: int = 1,
        initial_replicas: int = 1,
        variant: VariantChoice = None,
    ) -> None:
        if not 0 < target_utilization <= 1:
            raise TidalError(f"hpa: target_utilization must be in (0, 1], got {target_utilization}")
        if tolerance < 0:
            raise TidalError(f"hpa: tolerance must be >= 0, got {tolerance}")
        self.target, self.tolerance = target_utilization, tolerance
        self.cores, self.batch, self.initial, self.variant = cores, batch, initial_replicas, variant

    def desired(self, current: int, utilization: float) -> int:
        """Kubernetes' replica formula with tolerance."""
        ratio = utilization / self.target
        if abs(ratio - 1.0) <= self.tolerance:
            return current
        return max(0, math.ceil(current * ratio - 1e-9))

    def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
        check_context(ctx)
        chosen = pick_variants(ctx, self.variant)
        obs = {o.stage: o for o in ctx.observations}
        stages = []
        for st, v in zip(ctx.stages, chosen, strict=True):
            cur_sp = current_stage(ctx, st.stage)
            if cur_sp is None:
                replicas = self.initial
            elif st.stage in obs:
                replicas = self.desired(cur_sp.total_replicas, obs[st.stage].cpu_utilization)
            else:
                replicas = cur_sp.total_replicas  # no metric: keep (Kubernetes does too)
            stages.append(stage_plan(st.stage, v.name, max(1, replicas), self.cores, self.batch))
        return Plan(stages=tuple(stages)), ctx.state
