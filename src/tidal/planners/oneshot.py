"""One planning decision from a pipeline file, a rate and an SLO (what `tidal plan` prints).
The planner benchmark lives in `tidal.bench.planners`.

`decide()` validates its input at the boundary: an unknown policy, stage or variant, a profile
without a variant, a negative rate or a non-positive SLO raise TidalError naming the value.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tidal.core.clock import Clock, MonotonicClock
from tidal.core.errors import TidalError
from tidal.core.pipeline import PipelineSpec
from tidal.core.plan import Plan
from tidal.core.profile import ProfileSet
from tidal.planners.base import Capacity, PlanContext, StageCandidates, available, create
from tidal.planners.common import predicted_accuracy, predicted_latency_ms
from tidal.planners.synthetic import synthetic_variant


def load_profiles(spec: str | ProfileSet | None, pipeline: PipelineSpec) -> ProfileSet:
    """`spec`: a ProfileSet (as loaded by the caller: the reference or the papers' published
    profiles come from `tidal.profiling`, which planners do not import), a ProfileSet JSON
    path, or "synthetic" (labelled, not measured)."""
    if isinstance(spec, ProfileSet):
        return spec
    if spec == "synthetic":
        out = {}
        for st in pipeline.stages:
            for i, v in enumerate(st.variants):
                out[v] = synthetic_variant(v, i).model_copy(update={"task": st.task})
        return ProfileSet(source="synthetic", variants=out)
    if spec is None or spec in ("sponge", "infadapter", "reference"):
        raise TidalError(
            f"profile {spec or 'reference'!r} must be loaded by the caller "
            "(tidal.profiling.load_reference / load_imported) and passed as a ProfileSet"
        )
    return ProfileSet.load(spec)


def context_for(
    pipeline: PipelineSpec,
    profiles: ProfileSet,
    rps: float,
    slo_ms: float,
    capacity: Capacity,
    budgets_ms: tuple[float, ...] = (),
) -> PlanContext:
    """A steady-state context: `rps` observed and forecast, no plan in force."""
    if not math.isfinite(rps) or rps < 0:
        raise TidalError(f"rate must be >= 0 req/s, got {rps}")
    if not math.isfinite(slo_ms) or slo_ms <= 0:
        raise TidalError(f"SLO must be > 0 ms, got {slo_ms}")
    stages = tuple(
        StageCandidates(st.name, tuple(profiles.get(v) for v in st.variants))
        for st in pipeline.stages
    )
    return PlanContext(
        now=0.0,
        rate_history=(rps,) * 120,
        forecast=rps,
        stages=stages,
        current=None,
        slo_ms=slo_ms,
        capacity=capacity,
        budgets_ms=budgets_ms,
    )


def plan_json(
    policy: str, plan: Plan, ctx: PlanContext, decision_ms: float, combine: str
) -> dict[str, Any]:
    """The JSON shape printed by `tidal plan --json`."""
    stages = []
    for sp in plan.stages:
        variants: list[dict[str, Any]] = []
        for v in sp.variants:
            item: dict[str, Any] = {"name": v.name, "weight": round(v.weight, 6)}
            if v.replicas is not None or v.cores is not None:
                item["replicas"] = sp.replicas_of(v.name)
                item["cores"] = sp.cores_of(v.name)
            variants.append(item)
        stages.append(
            {
                "stage": sp.stage,
                "variants": variants,
                "replicas": sp.total_replicas,
                "cores": sp.cores,
                "batch": sp.batch,
            }
        )
    return {
        "policy": policy,
        "feasible": plan.feasible,
        "reason": plan.reason,
        "stages": stages,
        "predicted": {
            "latency_ms": round(predicted_latency_ms(plan, ctx), 3),
            "cores": plan.total_cores,
            "accuracy": round(predicted_accuracy(plan, ctx, combine), 6),
        },
        "decision_ms": round(decision_ms, 3),
    }


def decide(
    policy: str,
    pipeline_path: str | Path,
    rps: float,
    slo_ms: float,
    profile: str | ProfileSet | None = None,
    capacity: Capacity | None = None,
    options: dict[str, Any] | None = None,
    variants: dict[str, str] | None = None,
    clock: Clock | None = None,
) -> dict[str, Any]:
    """One decision of `policy`; returns `plan_json`. `variants` fixes stage -> variant for
    the policies that take a fixed variant (static, hpa, vpa, rayserve, fa2, sponge, themis)."""
    if policy not in available():
        raise TidalError(f"unknown policy {policy!r}; valid policies: {', '.join(available())}")
    pipeline = PipelineSpec.load(pipeline_path)
    kwargs = dict(options or {})
    if policy in ("ipa", "rim"):  # the pipeline says how stage accuracies combine
        kwargs.setdefault("accuracy", pipeline.accuracy_combine)
    if variants:
        for stage, name in variants.items():
            spec = pipeline.stage(stage)
            if name not in spec.variants:
                raise TidalError(
                    f"unknown variant {name!r} for stage {stage!r}; candidates: {spec.variants}"
                )
        kwargs["variant"] = dict(variants)
    planner = create(policy, **kwargs)
    profiles = load_profiles(profile, pipeline)
    ctx = context_for(pipeline, profiles, rps, slo_ms, capacity or Capacity())
    clock = clock or MonotonicClock()
    t0 = clock.now()
    plan, _ = planner.plan(ctx)
    dt = (clock.now() - t0) * 1000.0
    return plan_json(policy, plan, ctx, dt, pipeline.accuracy_combine)
