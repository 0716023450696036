"""`rayserve`: Ray Serve's default request-based autoscaling policy.

Faithful (Ray Serve `AutoscalingConfig` defaults, `_calculate_desired_num_replicas`):
- replicas push metrics every 10 s (`metrics_interval_s`, the decision interval here); the
  policy averages the total ongoing requests (queued + running) over the last 30 s
  (`look_back_period_s`);
- ``desired = ceil(current * (1 + (ongoing_per_replica / target - 1) * smoothing))`` with
  ``target_ongoing_requests = 2`` and smoothing factors 1;
- upscale_delay 30 s and downscale_delay 600 s: a change is applied only after every decision
  for that long wanted it; applied by `tidal.planners.wrapper.Governed` from ``governance``.
Reconstructed: Ray's loop runs every 0.1 s with a decision counter; with metrics every 10 s
this is the same as requiring agreement over the delay. Fixed variant, cores (1) and batch.
Input: `StageObservation.ongoing` (mean per replica).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from tidal.core.errors import TidalError
from tidal.core.plan import Plan
from tidal.planners.base import PlanContext, PlannerOptions, VariantChoice, register
from tidal.planners.common import check_context, current_stage, pick_variants, stage_plan
from tidal.planners.wrapper import Governance


@dataclass(frozen=True)
class RayServeState:
    """(time, total ongoing requests) samples per stage within the look-back window."""

    samples: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)


class RayServeOptions(PlannerOptions):
    """Options of `rayserve` (defaults: Ray Serve's `AutoscalingConfig`)."""

    target_ongoing_requests: float = Field(
        2.0, gt=0, le=10**4, description="Ongoing requests per replica aimed at (Ray 2)."
    )
    look_back_period_s: float = Field(
        30.0, gt=0, le=3600, description="Averaging window of the metric (Ray 30 s)."
    )
    upscale_smoothing_factor: float = Field(
        1.0, gt=0, le=100, description="Multiplier of upscale steps (Ray 1)."
    )
    downscale_smoothing_factor: float = Field(
        1.0, gt=0, le=100, description="Multiplier of downscale steps (Ray 1)."
    )
    initial_replicas: int = Field(1, ge=1, le=10**4, description="Replicas at start (Ray 1).")
    cores: float = Field(1.0, gt=0, le=1024, description="Cores of each replica (fixed).")
    batch: int = Field(1, ge=1, le=256, description="Batch size (fixed).")
    variant: VariantChoice = Field(None, description="Fixed variant per stage.")


@register("rayserve")
class RayServe:
    """Ray Serve's autoscaler (per stage = per deployment)."""

    name = "rayserve"
    interval_s = 10.0
    Options = RayServeOptions
    governance = Governance(upscale_delay_s=30.0, downscale_delay_s=600.0)

    def __init__(
        self,
        target_ongoing_requests: float = 2.0,
        look_back_period_s: float = 30.0,
        upscale_smoothing_factor: float = 1.0,
        downscale_smoothing_factor: float = 1.0,
        initial_replicas: int = 1,
        cores: float = 1.0,
        batch: int = 1,
        variant: VariantChoice = None,
    ) -> None:
        if target_ongoing_requests <= 0:
            raise TidalError(
                f"rayserve: target_ongoing_requests must be > 0, got {target_ongoing_requests}"
            )
        self.target, self.look_back = target_ongoing_requests, look_back_period_s
        self.up_s, self.down_s = upscale_smoothing_factor, downscale_smoothing_factor
        self.initial, self.cores, self.batch, self.variant = (
            initial_replicas,
            cores,
            batch,
            variant,
        )

    def desired(self, current: int, total_ongoing: float) -> int:
        """Ray Serve's replica formula."""
        if current == 0:
            return 1 if total_ongoing > 0 else 0
        error = total_ongoing / current / self.target
        smoothing = self.up_s if error >= 1 else self.down_s
        return max(0, math.ceil(current * (1 + (error - 1) * smoothing) - 1e-9))

    def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
        check_context(ctx)
        st = ctx.state if isinstance(ctx.state, RayServeState) else RayServeState()
        obs = {o.stage: o for o in ctx.observations}
        samples = dict(st.samples)
        stages = []
        for s, v in zip(ctx.stages, pick_variants(ctx, self.variant), strict=True):
            cur = current_stage(ctx, s.stage)
            n = self.initial if cur is None else cur.replicas
            hist = tuple(x for x in samples.get(s.stage, ()) if ctx.now - x[0] < self.look_back)
            if s.stage in obs:
                hist += ((ctx.now, obs[s.stage].ongoing * max(n, 1)),)
            samples[s.stage] = hist
            if cur is not None and hist:
                avg = sum(x[1] for x in hist) / len(hist)
                n = self.desired(cur.replicas, avg)
            stages.append(stage_plan(s.stage, v.name, max(1, n), self.cores, self.batch))
        return Plan(stages=tuple(stages)), RayServeState(samples)
