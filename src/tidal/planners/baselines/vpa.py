"""`vpa`: the Kubernetes Vertical Pod Autoscaler (recommender + updater), CPU only.

Faithful (kubernetes/autoscaler, vertical-pod-autoscaler recommender defaults):
- a decaying histogram of CPU usage per replica: exponential buckets (first 0.01 cores,
  ratio 1.05), each sample weighted by max(request, 0.1) x 2^((t - t0)/half_life), half-life
  24 h (`cpu_half_life_s`);
- target = 90th percentile x 1.15 (safety margin); lower / upper bounds = 50th / 95th
  percentile x 1.15; recommender every 60 s;
- the updater applies the target only when the current request lies outside [lower, upper];
- `mode="Recreate"` (VPA's Auto default): a resize recreates the replica, so the substrate
  must pay the variant's load_time_s: ``resize_mode == "recreate"`` (see
  `tidal.planners.base.resize_mode`); `mode="InPlaceOrRecreate"`: resized in place.
Reconstructed: confidence multipliers of the bounds are omitted (they only widen the band in
the first hours); OOM/memory are out of scope. Replicas and batch stay fixed.
Input: `StageObservation.usage_samples` (else `cpu_usage_cores`), stage-wide usage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tidal.core.errors import TidalError
from tidal.core.plan import Plan
from tidal.planners.base import RESIZE_IN_PLACE, RESIZE_RECREATE, PlanContext, register
from tidal.planners.common import check_context, current_stage, pick_variants, stage_plan

FIRST_BUCKET = 0.01
RATIO = 1.05
N_BUCKETS = 176  # covers up to ~1000 cores, as VPA's CPU histogram


def bucket_starts() -> np.ndarray:
    """Lower edge of every bucket (cores)."""
    i = np.arange(N_BUCKETS)
    return FIRST_BUCKET * (RATIO**i - 1.0) / (RATIO - 1.0)


_STARTS = bucket_starts()


def bucket_of(value: float) -> int:
    """Index of the bucket holding `value` cores."""
    k = int(np.searchsorted(_STARTS, value, side="right")) - 1
    return min(N_BUCKETS - 1, max(0, k))


def percentile(weights: np.ndarray, p: float) -> float:
    """VPA's histogram percentile: the end of the first bucket reaching fraction `p`."""
    total = float(weights.sum())
    if total <= 0:
        return 0.0
    k = int(np.searchsorted(np.cumsum(weights), p * total - 1e-12))
    k = min(k, N_BUCKETS - 1)
    return float(_STARTS[k + 1]) if k + 1 < N_BUCKETS else float(_STARTS[k])


@dataclass(frozen=True)
class VpaState:
    """Histograms per stage and the reference time of the decay."""

    t0: float | None = None
    hist: dict[str, tuple[float, ...]] = field(default_factory=dict)


@register("vpa")
class VPA:
    """Kubernetes VPA; resize applied by recreating (default) or in place."""

    name = "vpa"
    interval_s = 60.0

    def __init__(
        self,
        mode: str = "Recreate",
        target_percentile: float = 0.9,
        margin: float = 0.15,
        cpu_half_life_s: float = 86400.0,
        min_cores: float = 0.1,
        initial_cores: float = 1.0,
        replicas: int = 1,
        batch: int = 1,
        variant: dict[str, str] | str | int | None = None,
    ) -> None:
        if mode not in ("Recreate", "InPlaceOrRecreate"):
            raise TidalError(f"vpa: mode must be Recreate or InPlaceOrRecreate, got {mode!r}")
        self.mode = mode
        self.resize_mode = RESIZE_RECREATE if mode == "Recreate" else RESIZE_IN_PLACE
        self.p, self.margin, self.half_life = target_percentile, margin, cpu_half_life_s
        self.min_cores, self.initial, self.replicas = min_cores, initial_cores, replicas
        self.batch, self.variant = batch, variant

    def recommend(self, weights: np.ndarray) -> tuple[float, float, float]:
        """(lower, target, upper) cores per replica."""
        f = 1.0 + self.margin
        lo, tgt, up = (max(self.min_cores, percentile(weights, q) * f) for q in (0.5, self.p, 0.95))
        return lo, tgt, up

    def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
        check_context(ctx)
        st = ctx.state if isinstance(ctx.state, VpaState) else VpaState()
        t0 = ctx.now if st.t0 is None else st.t0
        obs = {o.stage: o for o in ctx.observations}
        hist = dict(st.hist)
        stages = []
        cpn = ctx.capacity.cores_per_node
        for s, v in zip(ctx.stages, pick_variants(ctx, self.variant), strict=True):
            w = np.array(hist.get(s.stage, (0.0,) * N_BUCKETS))
            cur = current_stage(ctx, s.stage)
            cores = self.initial if cur is None else cur.cores
            reps = self.replicas if cur is None else max(1, cur.replicas)
            o = obs.get(s.stage)
            if o is not None:
                samples = o.usage_samples or (o.cpu_usage_cores,)
                weight = max(cores, 0.1) * 2.0 ** ((ctx.now - t0) / self.half_life)
                for x in samples:
                    w[bucket_of(max(0.0, x) / reps)] += weight
            hist[s.stage] = tuple(float(x) for x in w)
            if w.sum() > 0:
                lo, tgt, up = self.recommend(w)
                if cur is None or not lo - 1e-9 <= cores <= up + 1e-9:
                    cores = tgt
            cores = min(cpn, max(self.min_cores, round(cores, 3)))
            stages.append(stage_plan(s.stage, v.name, reps, cores, self.batch))
        if not math.isfinite(sum(sum(h) for h in hist.values())):
            hist = {}  # decay weights overflowed (years of samples): restart the histogram
        return Plan(stages=tuple(stages)), VpaState(t0, hist)
