"""The latency profiler: one worker per variant, resized in place between grid points.

For each variant: start a worker at the largest core count of the grid (that start is the
measured cold start: spawn + load + warm-up), then for each core count (descending) resize in
place (recording the apply time and the request -> first-batch time), and for each batch size
(ascending) run `warmup` batches, then samples until `point_budget_s` is spent (at least
`min_samples`, at most `max_samples`). A point whose p50 exceeds `max_point_ms` ends that core
count's series (larger batches would only be slower): this bounds the big variants. Latency is
the round trip of `WorkerHandle.infer` (what the data plane sees), read from the injected clock.

The machine may be shared: the measured worker gets a high CPU weight (cgroup cpu.shares in its
own `tidal-profile` group) so that other jobs steal less of its quota, and the profiler itself
runs at nice -10 when permitted. The quota and CPU set still bound it exactly as in serving.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tidal.core.clock import Clock, MonotonicClock
from tidal.core.errors import TidalError
from tidal.core.profile import LatencyFit, ProfilePoint, ProfileSet, VariantProfile
from tidal.models.catalog import VariantSpec, get_variant
from tidal.profiling.fit import fit_measured
from tidal.profiling.machine import machine_info

FULL_BATCHES = (1, 2, 4, 8, 16)
FULL_CORES = (0.5, 1.0, 1.5, 2.0)
QUICK_BATCHES = (1, 4)
QUICK_CORES = (0.5, 1.0)


@dataclass(frozen=True)
class Grid:
    """Batch sizes x core counts to measure. Validated: batch >= 1, 0 < cores <= machine."""

    batches: tuple[int, ...]
    cores: tuple[float, ...]

    def __post_init__(self) -> None:
        from tidal.dataplane.worker_cpu import machine_cores

        if not self.batches or not self.cores:
            raise TidalError("grid needs at least one batch size and one core count")
        for b in self.batches:
            if not isinstance(b, int) or b < 1:
                raise TidalError(f"batch size {b!r} in grid must be an integer >= 1")
        total = machine_cores()
        for c in self.cores:
            if not (math.isfinite(c) and 0 < c <= total):
                raise TidalError(f"cores {c!r} in grid out of range: this machine has {total:g}")

    @property
    def size(self) -> int:
        return len(self.batches) * len(self.cores)


@dataclass(frozen=True)
class Budget:
    """Time bounds per grid point."""

    point_budget_s: float = 4.0
    min_samples: int = 3
    max_samples: int = 200
    warmup: int = 2
    max_point_ms: float = 2500.0
    cpu_weight: int | None = 262144  # cgroup cpu.shares of the measured worker (None: default)


QUICK_BUDGET = Budget(point_budget_s=0.6, min_samples=3, max_samples=40, warmup=1)


@dataclass
class VariantRun:
    """What profiling one variant measured (before the fit)."""

    name: str
    points: list[ProfilePoint] = field(default_factory=list)
    skipped: list[tuple[int, float]] = field(default_factory=list)
    cold_start_s: float = 0.0
    cold_start_breakdown: dict[str, float] = field(default_factory=dict)
    resize_apply_s: list[float] = field(default_factory=list)
    resize_to_batch_s: list[float] = field(default_factory=list)
    mechanism: str = ""
    throttled: dict[str, int] = field(default_factory=dict)


ProgressFn = Callable[[str, int, float], None]  # (variant, batch, cores) after each point


def measure_variant(
    name: str,
    grid: Grid,
    budget: Budget = Budget(),
    *,
    clock: Clock | None = None,
    progress: ProgressFn | None = None,
) -> VariantRun:
    """Measure `name` over `grid` in one worker resized in place. See module docstring."""
    from tidal.dataplane.worker import WorkerHandle

    spec = get_variant(name)
    clk = clock or MonotonicClock()
    cores_desc = sorted(grid.cores, reverse=True)
    run = VariantRun(name)
    w = WorkerHandle.start(name, cores_desc[0], clock=clk, cpu_weight=budget.cpu_weight)
    try:
        run.cold_start_s = w.cold_start_s
        run.cold_start_breakdown = dict(w.cold_start_breakdown)
        run.mechanism = w.mechanism
        for ci, cores in enumerate(cores_desc):
            if ci > 0 or not math.isclose(w.cores, cores):
                run.resize_apply_s.append(w.resize(cores))
            stop_series = False
            for bi, batch in enumerate(sorted(grid.batches)):
                if stop_series:
                    run.skipped.append((batch, cores))
                    if progress:
                        progress(name, batch, cores)
                    continue
                x = spec.input.sample(batch, seed=bi)
                lat: list[float] = []
                t_point = clk.now()
                for i in range(budget.warmup + budget.max_samples):
                    t0 = clk.now()
                    w.infer(x)
                    dt = clk.now() - t0
                    if w.last_resize_to_batch_s is not None and bi == 0 and i == 0 and ci > 0:
                        run.resize_to_batch_s.append(w.last_resize_to_batch_s)
                    if i < budget.warmup:
                        # A slow variant: one warm-up batch is enough once it exceeds the budget.
                        if dt * 1000 > budget.max_point_ms:
                            break
                        continue
                    lat.append(dt * 1000.0)
                    spent = clk.now() - t_point
                    if len(lat) >= budget.min_samples and spent >= budget.point_budget_s:
                        break
                if not lat:  # even the warm-up exceeded max_point_ms: one sample is all we get
                    t0 = clk.now()
                    w.infer(x)
                    lat.append((clk.now() - t0) * 1000.0)
                arr = np.array(lat)
                p50 = float(np.percentile(arr, 50))
                run.points.append(
                    ProfilePoint(
                        batch=batch,
                        cores=cores,
                        p50_ms=p50,
                        p99_ms=float(np.percentile(arr, 99)),
                        samples=len(lat),
                    )
                )
                if progress:
                    progress(name, batch, cores)
                if p50 > budget.max_point_ms:
                    stop_series = True
            thr = w.throttled_periods()
            if thr is not None:
                run.throttled[f"{cores:g}"] = thr
    finally:
        w.stop()
    return run


def spec_profile(spec: VariantSpec, fit: LatencyFit, **measured: Any) -> VariantProfile:
    """A VariantProfile with the catalog's metadata of `spec` (task, accuracy with its source
    and label, parameters), the fit, and `measured` fields (load_time_s, resize_s, points)."""
    return VariantProfile(
        name=spec.name,
        task=spec.task,
        accuracy=spec.accuracy,
        accuracy_source=f"{spec.accuracy_source} [{spec.label}]",
        params=spec.params,
        fit=fit,
        **measured,
    )


def measured_range(points: Sequence[ProfilePoint]) -> tuple[float, float] | None:
    """(fewest, most) cores among measured points; None without points."""
    if not points:
        return None
    cores = [p.cores for p in points]
    return (min(cores), max(cores))


def to_profile(run: VariantRun, extrapolate: bool = False) -> VariantProfile:
    """Fit the run's points and wrap them with the catalog's metadata, the range of cores
    measured, and whether planners may use the fit outside it (`extrapolate`, opt-in)."""
    resize = float(np.median(run.resize_apply_s)) if run.resize_apply_s else 0.0
    return spec_profile(
        get_variant(run.name),
        fit_measured(run.points),
        load_time_s=run.cold_start_s,
        resize_s=resize,
        points=run.points,
        cores_measured=measured_range(run.points),
        extrapolate=extrapolate,
    )


def profile_variants(
    names: Sequence[str],
    grid: Grid,
    budget: Budget = Budget(),
    *,
    clock: Clock | None = None,
    progress: ProgressFn | None = None,
    save_to: str | Path | None = None,
    extrapolate: bool = False,
) -> ProfileSet:
    """Measure and fit every variant in `names`; a ProfileSet with machine information.

    Each variant records the cores it was measured at (`cores_measured`); planners stay
    inside that range unless `extrapolate` (recorded too) allows the fit beyond it.
    With `save_to`, the file is rewritten after each variant, so a long run keeps its results.
    """
    for n in names:
        get_variant(n)  # fail fast on an unknown name, before any measurement
    info: dict[str, Any] = machine_info()
    info["grid"] = {"batches": list(grid.batches), "cores": list(grid.cores)}
    info["extrapolate"] = extrapolate
    info["budget"] = budget.__dict__.copy()
    info["fit_method"] = (
        "scipy curve_fit of l = gamma*b/c + delta*b + epsilon/c + eta on p50 (coefficients >= 0),"
        " relative least squares unless its R^2 < 0.9 (then plain): tidal.profiling.fit"
    )
    variants: dict[str, VariantProfile] = {}
    details: dict[str, Any] = {}
    if budget.cpu_weight is not None:
        with contextlib.suppress(OSError):  # needs root; harmless without
            os.setpriority(os.PRIO_PROCESS, 0, -10)
    for n in names:
        run = measure_variant(n, grid, budget, clock=clock, progress=progress)
        variants[n] = to_profile(run, extrapolate)
        info["cpu_mechanism"] = run.mechanism
        details[n] = {
            "cold_start_breakdown_s": run.cold_start_breakdown,
            "resize_apply_s": run.resize_apply_s,
            "resize_request_to_first_batch_end_s": run.resize_to_batch_s,
            "skipped_points": [list(s) for s in run.skipped],
            "nr_throttled_after_cores": run.throttled,
        }
        info["load_avg_end"] = list(os.getloadavg())
        info["details"] = details
        ps = ProfileSet(
            source="measured",
            machine=info,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            variants=dict(variants),
        )
        if save_to is not None:
            ps.save(save_to)
    return ps


def merge_profiles(base: ProfileSet, new: ProfileSet) -> ProfileSet:
    """`base` with `new`'s variants added or replaced; per-variant details and grids kept."""
    info = dict(base.machine)
    details = dict(info.get("details", {}))
    details.update(new.machine.get("details", {}))
    info["details"] = details
    grids = dict(info.get("grid_overrides", {}))
    for n in new.variants:
        grids[n] = new.machine.get("grid")
    info["grid_overrides"] = grids
    info["load_avg_end"] = new.machine.get("load_avg_end", info.get("load_avg_end"))
    return base.merged(new).model_copy(update={"machine": info})
