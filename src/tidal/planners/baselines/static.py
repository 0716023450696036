"""`static`: a fixed allocation, never changed (the lower bound on adaptivity).

Every stage gets `replicas` replicas of one fixed variant with `cores` cores and batch `batch`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tidal.core.errors import TidalError
from tidal.core.plan import Plan
from tidal.planners.base import PlanContext, PlannerOptions, VariantChoice, register
from tidal.planners.common import check_context, pick_variants, stage_plan


class StaticOptions(PlannerOptions):
    """Options of `static`. Give it the size a study's policies reach (e.g. the peak plan of
    the policy it is compared with); the defaults are only the smallest allocation."""

    replicas: int = Field(1, ge=1, le=10**4, description="Replicas of every stage.")
    cores: float = Field(1.0, gt=0, le=1024, description="Cores of each replica.")
    batch: int = Field(1, ge=1, le=256, description="Batch size.")
    variant: VariantChoice = Field(None, description="Fixed variant per stage.")


@register("static")
class Static:
    """Fixed plan. `variant`: stage->name map, a name, an index, "low"/"high" or None."""

    name = "static"
    interval_s = 60.0
    Options = StaticOptions

    def __init__(
        self,
        replicas: int = 1,
        cores: float = 1.0,
        batch: int = 1,
        variant: VariantChoice = None,
    ) -> None:
        if replicas < 1:
            raise TidalError(f"static: replicas must be >= 1, got {replicas}")
        if cores <= 0:
            raise TidalError(f"static: cores must be > 0, got {cores}")
        if batch < 1:
            raise TidalError(f"static: batch must be >= 1, got {batch}")
        self.replicas, self.cores, self.batch, self.variant = replicas, cores, batch, variant

    def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
        check_context(ctx)
        chosen = pick_variants(ctx, self.variant)
        return (
            Plan(
                stages=tuple(
                    stage_plan(st.stage, v.name, self.replicas, self.cores, self.batch)
                    for st, v in zip(ctx.stages, chosen, strict=True)
                )
            ),
            ctx.state,
        )
