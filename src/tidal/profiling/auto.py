"""Automatic quick profiling of repository versions, and the conservative estimate before it.

Contract:
- `quick_profile(variant, budget_s=60)` measures l(b, c) of one registered variant in ONE
  worker resized in place, within `budget_s` of wall time (checked before every batch; the
  worker's cold start counts), and fits Sponge's model. Points run corners first (largest and
  smallest core count x smallest and largest batch), so the four points a fit needs come first
  and the middle of the grid is filled while time remains. One progress line per point goes to
  the `tidal.profiling` logger. Returns a `QuickResult` (profile, points measured, seconds
  spent); TidalError when not even four points fit in the budget.
- `ESTIMATE` is the conservative fit a version serves with until it is profiled: 50 ms per
  row per core plus 10 ms (slower than every zoo variant but resnet101/152 at batch 1), so
  admission and the planners over-provide rather than under-provide.
- `FlagEstimates(planner, estimated)` wraps a planner (duck-typed: `plan(ctx) -> (plan, state)`)
  and appends "conservative estimate (not profiled yet): <variants>" to the plan's reason
  whenever a candidate of the context is still estimated. Other attributes pass through.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tidal.core.clock import Clock, MonotonicClock
from tidal.core.errors import TidalError
from tidal.core.profile import LatencyFit, ProfilePoint, VariantProfile
from tidal.models.catalog import VariantSpec, get_variant
from tidal.profiling.fit import fit_measured
from tidal.profiling.profiler import spec_profile

log = logging.getLogger("tidal.profiling")
ESTIMATE = LatencyFit(gamma=50.0, delta=0.0, epsilon=0.0, eta=10.0, r2=0.0, p99_ratio=1.5)
QUICK_BATCHES = (1, 4, 16)
QUICK_CORES = (0.5, 1.0, 2.0)
PROFILE_CPU_WEIGHT = 262144  # as the profiler: neighbours on a shared machine disturb less
MIN_SAMPLES = 3
NOTE_PREFIX = "conservative estimate (not profiled yet): "
ESTIMATE_NOTE = re.compile(r"(; )?" + re.escape(NOTE_PREFIX) + r"[^;]*")


@dataclass(frozen=True)
class QuickResult:
    """A quick profile and what it cost."""

    profile: VariantProfile
    points: int
    seconds: float
    skipped: int


def sample_batch(spec: VariantSpec, batch: int, seed: int = 0) -> Any:
    """A valid batch for `spec`: an ndarray for one input, else the protocol layer's
    TensorSet of every named input (`tidal.dataplane.tensors`)."""
    if len(spec.inputs) <= 1:
        return spec.input.sample(batch, seed)
    # Function-local: the multi-input container belongs to the data plane's framing.
    from tidal.dataplane.tensors import TensorSet  # type: ignore[import-not-found,unused-ignore]
    from tidal.models.catalog import InputSpec

    arrays = {
        t.name: InputSpec(t.sample_shape, t.numpy_dtype, int_high=2, int_low=0).sample(batch, seed)
        for t in spec.inputs
    }
    return TensorSet(arrays)


def _order(batches: list[int], cores: list[float]) -> list[tuple[int, float]]:
    """Corners first (fit needs >= 2 batches x >= 2 core counts), then the rest."""
    corners = [(batches[0], cores[-1]), (batches[-1], cores[-1])]
    corners += [(batches[0], cores[0]), (batches[-1], cores[0])]
    out: list[tuple[int, float]] = []
    for p in corners + [(b, c) for c in reversed(cores) for b in batches]:
        if p not in out:
            out.append(p)
    return out


def quick_grid(spec: VariantSpec, machine_cores: float) -> tuple[list[int], list[float]]:
    """Batches (capped by the version's max_batch_size) and core counts (capped by the
    machine) of the quick profile."""
    cap = spec.max_batch_size or max(QUICK_BATCHES)
    batches = sorted({min(b, cap) for b in QUICK_BATCHES})
    if len(batches) < 2:
        batches = [1, 2] if cap >= 2 else [1]
    cores = sorted({c for c in QUICK_CORES if c <= machine_cores} | {float(machine_cores)})
    if len(cores) < 2:
        cores = sorted({machine_cores / 2, machine_cores})
    return batches, cores


def quick_profile(
    variant: str,
    budget_s: float = 60.0,
    *,
    clock: Clock | None = None,
    progress: Callable[[str], None] | None = None,
    cpu_weight: int | None = PROFILE_CPU_WEIGHT,
) -> QuickResult:
    """See the module docstring."""
    from tidal.dataplane.worker import WorkerHandle
    from tidal.dataplane.worker_cpu import machine_cores

    spec = get_variant(variant)
    clk = clock or MonotonicClock()
    say = progress or (lambda msg: log.info("%s", msg))
    t0 = clk.now()
    deadline = t0 + budget_s
    batches, cores = quick_grid(spec, machine_cores())
    order = _order(batches, cores)
    per_point = max(0.05, 0.8 * budget_s / (len(order) + 2))  # +2: cold start and slack
    points: list[ProfilePoint] = []
    skipped = 0
    w = WorkerHandle.start(variant, cores[-1], clock=clk, cpu_weight=cpu_weight)
    try:
        load_s = w.cold_start_s
        resize: list[float] = []
        for i, (b, c) in enumerate(order):
            if clk.now() >= deadline:
                skipped = len(order) - i
                break
            if not math.isclose(w.cores, c):
                resize.append(w.resize(c))
            x = sample_batch(spec, b, seed=i)
            w.infer(x)  # one warm-up batch at this size
            lat: list[float] = []
            t_point = clk.now()
            while clk.now() < deadline:
                s0 = clk.now()
                w.infer(x)
                lat.append((clk.now() - s0) * 1e3)
                if len(lat) >= MIN_SAMPLES and clk.now() - t_point >= per_point:
                    break
            if not lat:
                skipped = len(order) - i
                break
            arr = np.array(lat)
            pt = ProfilePoint(
                batch=b,
                cores=c,
                p50_ms=max(float(np.percentile(arr, 50)), 1e-6),
                p99_ms=max(float(np.percentile(arr, 99)), 1e-6),
                samples=len(lat),
            )
            points.append(pt)
            say(
                f"auto-profile {variant}: point {i + 1}/{len(order)} batch {b} x {c:g} cores: "
                f"p50 {pt.p50_ms:.2f} ms ({len(lat)} samples), {clk.now() - t0:.1f} s of "
                f"{budget_s:g} s"
            )
    finally:
        w.stop()
    spent = clk.now() - t0
    if len(points) < 4 or len({p.batch for p in points}) < 2 or len({p.cores for p in points}) < 2:
        raise TidalError(
            f"auto-profile {variant}: only {len(points)} points fit in {budget_s:g} s "
            "(raise auto_profile_budget_s or run `tidal profile` on it)"
        )
    fit = fit_measured(points)
    p99 = float(np.mean([p.p99_ms / p.p50_ms for p in points]))
    fit = fit.model_copy(update={"p99_ratio": max(1.0, p99)})
    prof = spec_profile(
        spec,
        fit,
        load_time_s=load_s,
        resize_s=float(np.median(resize)) if resize else 0.0,
        points=points,
        cores_measured=(min(p.cores for p in points), max(p.cores for p in points)),
    )
    return QuickResult(prof, len(points), spent, skipped)


def estimated_profile(spec: VariantSpec) -> VariantProfile:
    """The conservative stand-in profile of a version not profiled yet."""
    return spec_profile(
        spec, ESTIMATE, load_time_s=spec.load_time_s if spec.load_time_s is not None else 2.0
    )


class FlagEstimates:
    """A planner wrapper flagging estimated candidates in the plan's reason (see module doc)."""

    def __init__(self, inner: Any, estimated: Callable[[], Iterable[str]]) -> None:
        self._wrapped = inner
        self._estimated = estimated

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)

    def plan(self, ctx: Any) -> tuple[Any, Any]:
        plan, state = self._wrapped.plan(ctx)
        est = set(self._estimated())
        names = sorted({v.name for st in ctx.stages for v in st.variants if v.name in est})
        # A planner may hand back the plan in force with the note of an earlier decision.
        base = ESTIMATE_NOTE.sub("", plan.reason or "")
        reason = base
        if names:
            note = f"{NOTE_PREFIX}{', '.join(names)}"
            reason = f"{base}; {note}" if base else note
        if reason != (plan.reason or ""):
            plan = plan.model_copy(update={"reason": reason})
        return plan, state


__all__ = [
    "ESTIMATE",
    "FlagEstimates",
    "QuickResult",
    "estimated_profile",
    "quick_grid",
    "quick_profile",
    "sample_batch",
]
