"""Helpers shared by the policies: the latency model they plan with, plan construction,
bin-packing onto nodes and the minimum plan.

Latency model (every policy, and the brute-force references in the tests):
- processing latency of a batch of `b` on `c` cores: the profile's fitted p99,
  ``VariantProfile.p99_ms(b, c)`` (fitted p50 x measured p99/p50 ratio);
- throughput of one replica: ``VariantProfile.throughput(b, c) = b / l50(b, c)``;
- queueing delay to fill a batch at rate lam (req/s): ``1000 * (b - 1) / lam`` ms (IPA's term,
  with beta, not the prototype's binary indicator).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from tidal.core.errors import TidalError
from tidal.core.plan import Plan, StagePlan, VariantWeight
from tidal.core.profile import VariantProfile
from tidal.planners.base import Capacity, PlanContext, StageCandidates

BATCHES: tuple[int, ...] = (1, 2, 4, 8, 16)
"""Batch sizes the policies consider (IPA: powers of two up to 16)."""

EPS = 1e-9


def queue_ms(batch: int, lam: float) -> float:
    """Time (ms) to fill a batch of `batch` at `lam` req/s; 0 for batch 1, inf at zero load."""
    if batch <= 1:
        return 0.0
    if lam <= 1e-9:  # (near) zero load: a batch of more than one never fills
        return math.inf
    return 1000.0 * (batch - 1) / lam


def stage_latency_ms(profile: VariantProfile, batch: int, cores: float, lam: float) -> float:
    """Planned latency of one stage: p99 processing + batch-filling delay (ms)."""
    return profile.p99_ms(batch, cores) + queue_ms(batch, lam)


def replicas_needed(profile: VariantProfile, batch: int, cores: float, lam: float) -> int:
    """Fewest replicas with ``n * h(b, c) >= lam`` (at least 1)."""
    if lam <= 0:
        return 1
    h = profile.throughput(batch, cores)
    if h <= 0:
        raise TidalError(
            f"variant {profile.name!r}: non-positive throughput at b={batch}, c={cores}"
        )
    return max(1, math.ceil(lam / h - 1e-9))


def core_grid(max_cores: float, step: float = 0.5, minimum: float | None = None) -> list[float]:
    """Cores per replica considered: `minimum` (default `step`), then multiples of `step` up to
    `max_cores` inclusive."""
    lo = step if minimum is None else minimum
    out: list[float] = []
    k = 1
    while True:
        c = round(k * step, 6)
        if c > max_cores + EPS:
            break
        if c >= lo - EPS:
            out.append(c)
        k += 1
    if not out:
        out = [max(min(lo, max_cores), EPS)]
    return out


def max_cores_per_replica(profile: VariantProfile, capacity: Capacity) -> float:
    """A replica cannot span nodes; vertical scaling stops where the speed-up flattens, and
    at the most cores the profile measured (`VariantProfile.core_bounds`: no extrapolation
    unless the profile allows it)."""
    cap = capacity.cores_per_node
    if profile.max_useful_cores is not None:
        cap = min(cap, profile.max_useful_cores)
    bounds = profile.core_bounds()
    if bounds is not None:
        cap = min(cap, bounds[1])
    return cap


def min_cores_per_replica(profile: VariantProfile) -> float:
    """The fewest cores per replica a planner may give `profile`: the fewest it measured
    (`VariantProfile.core_bounds`), or 0 when no range is recorded or extrapolation is
    allowed."""
    bounds = profile.core_bounds()
    return 0.0 if bounds is None else bounds[0]


def fits(plan: Plan, capacity: Capacity) -> bool:
    """True if every replica of `plan` can be placed on the nodes (first-fit decreasing)."""
    sizes: list[float] = []
    for sp in plan.stages:
        for v in sp.variants:
            sizes += [sp.cores_of(v.name)] * sp.replicas_of(v.name)
    return pack(sizes, capacity) is not None


def pack(sizes: Iterable[float], capacity: Capacity) -> list[int] | None:
    """First-fit-decreasing placement of replica sizes onto nodes; node index per replica in
    decreasing-size order, or None if they do not fit."""
    free = [capacity.cores_per_node] * capacity.nodes
    placed: list[int] = []
    for s in sorted(sizes, reverse=True):
        for i, f in enumerate(free):
            if s <= f + EPS:
                free[i] = f - s
                placed.append(i)
                break
        else:
            return None
    return placed


def stage_plan(stage: str, variant: str, replicas: int, cores: float, batch: int) -> StagePlan:
    """A single-variant StagePlan."""
    return StagePlan(
        stage=stage,
        variants=(VariantWeight(name=variant),),
        replicas=replicas,
        cores=cores,
        batch=batch,
    )


def find_variant(stage: StageCandidates, name: str | int | None) -> VariantProfile:
    """The candidate of `stage` named `name` (or at index `name`; None = first/smallest).
    TidalError naming the variant and the valid ones otherwise."""
    if name is None:
        return stage.variants[0]
    if isinstance(name, int):
        if not -len(stage.variants) <= name < len(stage.variants):
            raise TidalError(
                f"stage {stage.stage!r}: variant index {name} out of range "
                f"(has {len(stage.variants)} variants)"
            )
        return stage.variants[name]
    for v in stage.variants:
        if v.name == name:
            return v
    raise TidalError(
        f"unknown variant {name!r} for stage {stage.stage!r}; "
        f"candidates: {[v.name for v in stage.variants]}"
    )


def pick_variants(
    ctx: PlanContext, choice: dict[str, str] | str | int | None
) -> list[VariantProfile]:
    """One fixed variant per stage: `choice` is a stage->name map, a name/index for all stages,
    "low" (smallest), "high" (most accurate) or None (smallest)."""
    out = []
    for st in ctx.stages:
        if isinstance(choice, dict):
            out.append(find_variant(st, choice.get(st.stage)))
        elif choice == "low":
            out.append(st.variants[0])
        elif choice == "high":
            out.append(max(st.variants, key=lambda v: v.accuracy))
        else:
            out.append(find_variant(st, choice))
    return out


def current_stage(ctx: PlanContext, stage: str) -> StagePlan | None:
    """The current plan's StagePlan for `stage`, or None."""
    if ctx.current is None:
        return None
    for sp in ctx.current.stages:
        if sp.stage == stage:
            return sp
    return None


def minimum_plan(
    ctx: PlanContext,
    variants: Sequence[VariantProfile] | None = None,
    cores: float = 1.0,
    *,
    feasible: bool = True,
    reason: str = "",
) -> Plan:
    """One replica per stage, `cores` cores (capped by the node), batch 1."""
    chosen = variants if variants is not None else [s.variants[0] for s in ctx.stages]
    c = min(cores, ctx.capacity.cores_per_node)
    return Plan(
        stages=tuple(
            stage_plan(st.stage, v.name, 1, c, 1) for st, v in zip(ctx.stages, chosen, strict=True)
        ),
        feasible=feasible,
        reason=reason,
    )


def predicted_latency_ms(plan: Plan, ctx: PlanContext, lam: float | None = None) -> float:
    """End-to-end planned latency of `plan` under the common latency model (ms). For a
    multi-variant stage the slowest variant counts."""
    lam = ctx.load if lam is None else lam
    total = 0.0
    for sp, st in zip(plan.stages, ctx.stages, strict=False):
        worst = 0.0
        for v in sp.variants:
            prof = find_variant(st, v.name)
            if sp.replicas_of(v.name) > 0:
                worst = max(worst, stage_latency_ms(prof, sp.batch, sp.cores_of(v.name), lam))
        total += worst
    return total


def predicted_accuracy(plan: Plan, ctx: PlanContext, combine: str = "product") -> float:
    """Traffic-weighted accuracy per stage, combined by product or sum over stages."""
    accs = []
    for sp, st in zip(plan.stages, ctx.stages, strict=False):
        accs.append(sum(v.weight * find_variant(st, v.name).accuracy for v in sp.variants))
    if combine == "sum":
        return sum(accs)
    return math.prod(accs)


def check_context(ctx: PlanContext) -> None:
    """Raise TidalError for configuration errors (not load): no stages, negative SLO."""
    if not ctx.stages:
        raise TidalError("plan context has no stages")
    if ctx.slo_ms <= 0 or not math.isfinite(ctx.slo_ms):
        raise TidalError(f"SLO must be a positive number of ms, got {ctx.slo_ms}")
    if ctx.forecast is not None and (ctx.forecast < 0 or not math.isfinite(ctx.forecast)):
        raise TidalError(f"forecast rate must be >= 0 req/s, got {ctx.forecast}")
    for st in ctx.stages:
        if not st.variants:
            raise TidalError(f"stage {st.stage!r} has no candidate variants")
