"""`vpa`: the Kubernetes Vertical Pod Autoscaler (recommender + updater), CPU only.

Faithful to kubernetes/autoscaler `vertical-pod-autoscaler` (recommender `logic/recommender.go`,
`logic/estimator.go`, `model/aggregate_container_state.go`; updater `--min-replicas`):
- a decaying histogram of CPU usage per replica: exponential buckets (first 0.01 cores,
  ratio 1.05), each sample weighted by max(request, 0.1) x 2^((t - t0)/half_life), half-life
  24 h (`cpu_half_life_s`); the recommender runs every 60 s;
- estimates: target = 90th percentile, lower bound = 50th, upper bound = 95th, each x (1 +
  0.15) (safety margin);
- confidence multipliers: with `confidence` = min(history span, samples at one a minute) in
  days, upper bound x (1 + 1/confidence) and lower bound x (1 + 0.001/confidence)^-2. With no
  history the upper bound is infinite and the lower 0; with 20 minutes the upper bound is ~73x,
  so a pod is not shrunk on minutes of history; with a week ~1.14x;
- the updater resizes a replica only when its request lies outside [lower, upper], and then to
  the target; it evicts (Recreate) only when the stage has at least `min_replicas_to_evict`
  (updater flag `--min-replicas`, default 2) live replicas: a single replica is never evicted;
- `mode="Recreate"` (VPA's Auto mode): a resize recreates the replica, which pays the variant's
  load_time_s (``resize_mode == "recreate"``); `mode="InPlaceOrRecreate"` (VPA >= 1.4,
  AEP-4016): resized in place, no eviction, so the min-replicas guard does not apply (our
  reading of AEP-4016: the guard protects availability against evictions).
- at creation (no plan in force) the admission controller sets the target if one exists.
Reconstructed: one sample per minute of the observation window counts towards the sample
count (metrics-server resolution); the updater's 12 h "significant change" path and its
eviction tolerance (a fraction of replicas per pass) are not modelled (a plan sizes every
replica of a stage alike); memory/OOM are out of scope. Replicas default to 2 (the updater's
minimum to act at all); batch is fixed.
Input: `StageObservation.usage_samples` (else `cpu_usage_cores`), stage-wide usage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from tidal.core.errors import TidalError
from tidal.core.plan import Plan
from tidal.planners.base import (
    RESIZE_IN_PLACE,
    RESIZE_RECREATE,
    PlanContext,
    PlannerOptions,
    VariantChoice,
    register,
)
from tidal.planners.common import check_context, current_stage, pick_variants, stage_plan

FIRST_BUCKET = 0.01
RATIO = 1.05
N_BUCKETS = 176  # covers up to ~1000 cores, as VPA's CPU histogram
DAY_S = 86400.0


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


def confidence_days(first_s: float | None, last_s: float | None, samples: float) -> float:
    """VPA's `getConfidence`: min(history span in days, samples / (60*24))."""
    if first_s is None or last_s is None:
        return 0.0
    return min((last_s - first_s) / DAY_S, samples / (60.0 * 24.0))


def with_confidence(value: float, multiplier: float, exponent: float, conf: float) -> float:
    """VPA's `WithConfidenceMultiplier`: value * (1 + multiplier/confidence)^exponent."""
    if conf <= 0:
        return math.inf if exponent > 0 else 0.0
    return value * (1.0 + multiplier / conf) ** exponent


@dataclass(frozen=True)
class StageHistory:
    """One stage's aggregate: histogram weights, first/last sample time, sample count."""

    weights: tuple[float, ...] = ()
    first_s: float | None = None
    last_s: float | None = None
    samples: float = 0.0


@dataclass(frozen=True)
class VpaState:
    """Histograms per stage and the reference time of the decay."""

    t0: float | None = None
    hist: dict[str, StageHistory] = field(default_factory=dict)


class VpaOptions(PlannerOptions):
    """Options of `vpa` (defaults: the VPA recommender's and updater's flags)."""

    mode: Literal["Recreate", "InPlaceOrRecreate"] = Field(
        "Recreate", description="Update mode: evict and recreate, or resize in place."
    )
    target_percentile: float = Field(0.9, gt=0, le=1, description="Target percentile (0.9).")
    lower_percentile: float = Field(0.5, gt=0, le=1, description="Lower-bound percentile (0.5).")
    upper_percentile: float = Field(0.95, gt=0, le=1, description="Upper-bound percentile (0.95).")
    margin: float = Field(0.15, ge=0, le=10, description="Safety margin fraction (0.15).")
    cpu_half_life_s: float = Field(86400.0, gt=0, description="Histogram decay half-life (24 h).")
    confidence: bool = Field(True, description="Apply the bounds' confidence multipliers.")
    min_replicas_to_evict: int = Field(
        2, ge=1, le=10**4, description="Updater --min-replicas: fewer live replicas, no evict."
    )
    min_cores: float = Field(
        0.1, gt=0, le=1024, description="Smallest recommendation (minAllowed; VPA's 0.025)."
    )
    initial_cores: float = Field(1.0, gt=0, le=1024, description="Request before any history.")
    replicas: int = Field(2, ge=1, le=10**4, description="Replicas of every stage (fixed).")
    batch: int = Field(1, ge=1, le=256, description="Batch size (fixed).")
    variant: VariantChoice = Field(None, description="Fixed variant per stage.")


@register("vpa")
class VPA:
    """Kubernetes VPA; resize applied by recreating (default) or in place."""

    name = "vpa"
    interval_s = 60.0
    Options = VpaOptions

    def __init__(
        self,
        mode: str = "Recreate",
        target_percentile: float = 0.9,
        lower_percentile: float = 0.5,
        upper_percentile: float = 0.95,
        margin: float = 0.15,
        cpu_half_life_s: float = 86400.0,
        confidence: bool = True,
        min_replicas_to_evict: int = 2,
        min_cores: float = 0.1,
        initial_cores: float = 1.0,
        replicas: int = 2,
        batch: int = 1,
        variant: VariantChoice = None,
    ) -> None:
        if mode not in ("Recreate", "InPlaceOrRecreate"):
            raise TidalError(f"vpa: mode must be Recreate or InPlaceOrRecreate, got {mode!r}")
        self.mode = mode
        self.resize_mode = RESIZE_RECREATE if mode == "Recreate" else RESIZE_IN_PLACE
        self.p, self.p_lo, self.p_up = target_percentile, lower_percentile, upper_percentile
        self.margin, self.half_life, self.confidence = margin, cpu_half_life_s, confidence
        self.min_evict = min_replicas_to_evict
        self.min_cores, self.initial, self.replicas = min_cores, initial_cores, replicas
        self.batch, self.variant = batch, variant

    def recommend(self, h: StageHistory) -> tuple[float, float, float]:
        """(lower, target, upper) cores per replica, with the confidence multipliers."""
        w = np.asarray(h.weights, dtype=np.float64)
        f = 1.0 + self.margin
        lo, tgt, up = (percentile(w, q) * f for q in (self.p_lo, self.p, self.p_up))
        if self.confidence:
            conf = confidence_days(h.first_s, h.last_s, h.samples)
            up = with_confidence(up, 1.0, 1.0, conf)
            lo = with_confidence(lo, 0.001, -2.0, conf)
        floor = self.min_cores
        return max(floor, lo), max(floor, tgt), max(floor, up)

    def observe(
        self,
        h: StageHistory,
        samples: tuple[float, ...],
        request: float,
        reps: int,
        t: float,
        t0: float,
        window_s: float,
    ) -> StageHistory:
        """Add stage-wide usage samples (cores) as per-replica samples to the histogram."""
        w = np.array(h.weights or (0.0,) * N_BUCKETS, dtype=np.float64)
        weight = max(request, 0.1) * 2.0 ** ((t - t0) / self.half_life)
        for x in samples:
            w[bucket_of(max(0.0, x) / reps)] += weight
        first = t - window_s if h.first_s is None else h.first_s
        # one sample a minute of the window (metrics-server resolution), at least one
        count = h.samples + max(1.0, window_s / 60.0)
        return StageHistory(tuple(float(x) for x in w), first, t, count)

    def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
        check_context(ctx)
        st = ctx.state if isinstance(ctx.state, VpaState) else VpaState()
        t0 = ctx.now if st.t0 is None else st.t0
        obs = {o.stage: o for o in ctx.observations}
        hist = dict(st.hist)
        stages = []
        cpn = ctx.capacity.cores_per_node
        for s, v in zip(ctx.stages, pick_variants(ctx, self.variant), strict=True):
            h = hist.get(s.stage, StageHistory())
            cur = current_stage(ctx, s.stage)
            cores = self.initial if cur is None else cur.cores
            reps = self.replicas if cur is None else max(1, cur.replicas)
            o = obs.get(s.stage)
            if o is not None:
                samples = o.usage_samples or (o.cpu_usage_cores,)
                h = self.observe(h, samples, cores, reps, ctx.now, t0, self.interval_s)
            hist[s.stage] = h
            if h.weights and sum(h.weights) > 0:
                lo, tgt, up = self.recommend(h)
                if cur is None:
                    cores = tgt  # admission controller: a new pod gets the target
                elif not lo - 1e-9 <= cores <= up + 1e-9:
                    evicts = self.mode == "Recreate"
                    if not evicts or reps >= self.min_evict:
                        cores = tgt
            cores = min(cpn, max(self.min_cores, round(cores, 3)))
            stages.append(stage_plan(s.stage, v.name, reps, cores, self.batch))
        if not all(math.isfinite(sum(h.weights)) for h in hist.values()):
            hist = {}  # decay weights overflowed (years of samples): restart the histogram
        return Plan(stages=tuple(stages)), VpaState(t0, hist)
