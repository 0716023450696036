"""`fa2`: FA2 (Razavi et al., "FA2: Fast, Accurate Autoscaling for Serving Deep Learning
Inference with SLA Guarantees", RTAS 2022), the horizontal baseline of IPA and Sponge.

Faithful: the variant of every stage is fixed (`variant="low"`: the smallest, FA2-low;
`"high"`: the most accurate, FA2-high); each replica has a fixed size (`cores_per_replica`,
1 core as in Sponge's comparison, at most `max_replicas` = 16 replicas); FA2 chooses replicas
and batch per stage minimizing total cores under the end-to-end SLA, by dynamic programming
over the stages (FA2 uses a graph/DP formulation), here the same discretized DP as Themis.
Reconstructed: latency model shared with the other planners (p99 + (b-1)/lambda queueing).
Interval 10 s (IPA's adaptation interval, used for all its baselines).
Headroom (project default): replicas sized at `utilization` 0.8, as every planner here.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tidal.core.errors import TidalError
from tidal.core.plan import Plan
from tidal.planners.base import PlanContext, PlannerOptions, VariantChoice, register
from tidal.planners.common import (
    BATCHES,
    check_context,
    pick_variants,
    replicas_needed,
    stage_latency_ms,
    stage_plan,
)
from tidal.planners.dp import Option, min_cost


class Fa2Options(PlannerOptions):
    """Options of `fa2` (defaults: Sponge's and IPA's FA2 comparison)."""

    variant: VariantChoice = Field("low", description="Fixed variant: low (FA2-low) or high.")
    cores_per_replica: float = Field(1.0, gt=0, le=1024, description="Cores of each replica.")
    max_replicas: int = Field(16, ge=1, le=10**4, description="Replicas per stage at most.")
    resolution_ms: float | None = Field(
        None, gt=0, description="DP latency grid (ms); default SLO/2000."
    )
    utilization: float = Field(
        0.8, gt=0, le=1, description="Target utilisation (headroom); project default 0.8."
    )


@register("fa2")
class FA2:
    """Fixed variant; replicas and batch per stage by DP."""

    name = "fa2"
    interval_s = 10.0
    Options = Fa2Options

    def __init__(
        self,
        variant: VariantChoice = "low",
        cores_per_replica: float = 1.0,
        max_replicas: int = 16,
        resolution_ms: float | None = None,
        utilization: float = 0.8,
    ) -> None:
        if cores_per_replica <= 0:
            raise TidalError(f"fa2: cores_per_replica must be > 0, got {cores_per_replica}")
        self.variant, self.cores, self.max_replicas = variant, cores_per_replica, max_replicas
        self.resolution_ms, self.utilization = resolution_ms, utilization

    def options(self, ctx: PlanContext, variant: Any) -> list[Option]:
        c = min(self.cores, ctx.capacity.cores_per_node)
        slots = ctx.capacity.nodes * int(ctx.capacity.cores_per_node // c + 1e-9)
        out = []
        for b in BATCHES:
            n = replicas_needed(variant, b, c, ctx.load / self.utilization)
            if n <= min(self.max_replicas, slots):
                out.append(Option(stage_latency_ms(variant, b, c, ctx.load), n * c, (n, c, b)))
        return out

    def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
        check_context(ctx)
        chosen = pick_variants(ctx, self.variant)
        opts = [self.options(ctx, v) for v in chosen]
        res = self.resolution_ms or max(ctx.slo_ms / 2000.0, 0.01)
        picked = min_cost(opts, ctx.slo_ms, res)
        if picked is not None:
            stages = tuple(
                stage_plan(st.stage, v.name, *o.payload)
                for st, v, o in zip(ctx.stages, chosen, picked, strict=True)
            )
            return Plan(stages=stages), ctx.state
        c = min(self.cores, ctx.capacity.cores_per_node)
        n_max = min(self.max_replicas, ctx.capacity.nodes * int(ctx.capacity.cores_per_node // c))
        stages = tuple(
            stage_plan(st.stage, v.name, max(1, n_max // len(chosen)), c, 1)
            for st, v in zip(ctx.stages, chosen, strict=True)
        )
        reason = (
            f"no replicas/batch of the fixed variants meet {ctx.slo_ms:g} ms at {ctx.load:g} req/s"
        )
        return Plan(stages=stages, feasible=False, reason=reason), ctx.state
