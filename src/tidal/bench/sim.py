"""Simulator benchmarks (figures, never asserted by tests).

- `bench_long_replay`: the first `days` days of the Twitter trace (22 days = 121 M requests)
  through a one-stage ResNet-18 service in the fast mode, per-request outcomes aggregated in
  bounded memory. Prints simulated requests per second of wall time. Without ../shared it
  replays a synthetic diurnal trace of the same length and mean rate instead, and says so
  (``trace``, ``note``). Its result also carries the reference mode's figure on the two-stage
  pipeline (``reference_two_stage``: the event heap driving the data plane's GroupScheduler)
  and the load average at start and end.
- `bench_scale`: a 100-node x 16-core cluster with 1,600 replicas (fast mode), and a 10-stage
  pipeline (reference mode), with their wall times.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tidal.core.clock import MonotonicClock
from tidal.core.pipeline import PipelineSpec, StageSpec
from tidal.core.profile import ProfileSet
from tidal.sim.config import SimConfig
from tidal.sim.engine import simulate

# Sized for the trace's peak (388 req/s): 8 x ResNet-18 on 2 cores at batch 8 (~56 req/s each).
STATIC_PEAK = {"replicas": 8, "cores": 2.0, "batch": 8}


def _resnet18() -> tuple[PipelineSpec, ProfileSet]:
    from tidal.profiling import load_reference

    prof = load_reference()
    pipe = PipelineSpec(
        name="resnet18",
        stages=[StageSpec(name="classify", task="image", variants=["resnet18"])],
    )
    return pipe, prof


# The Twitter trace's length and mean rate (1,899,061 s, 120,774,326 requests): the synthetic
# stand-in has the same, as a daily sine between 20 and 107 req/s with Poisson noise.
TWITTER_SECONDS = 1_899_061
TWITTER_MEAN_RATE = 120_774_326 / TWITTER_SECONDS


def synthetic_twitter(seconds: int, seed: int = 0) -> np.ndarray:
    """A stand-in for the Twitter trace: `seconds` of a daily cycle (mean 63.6 req/s, peak
    107 req/s, under the static sizing's 388), seeded Poisson counts per second."""
    t = np.arange(seconds, dtype=np.float64)
    low, high = 20.0, 2 * TWITTER_MEAN_RATE - 20.0
    shape = low + (high - low) * 0.5 * (1 - np.cos(2 * np.pi * t / 86400.0))
    return np.random.default_rng(seed).poisson(shape).astype(np.float64)


def long_trace(days: float) -> tuple[np.ndarray, str, str]:
    """(rates, trace name, note): the Twitter trace from ../shared, else the synthetic one of
    the same length (note says why)."""
    from tidal.core.errors import TidalError
    from tidal.workload.twitter import full_trace

    n = int(days * 86400)
    try:
        return full_trace()[:n].astype(np.float64), "twitter", ""
    except TidalError as e:
        note = f"../shared not found ({e}); replayed a synthetic trace of the same length"
        return synthetic_twitter(min(n, TWITTER_SECONDS)), "synthetic", note


def bench_reference_two_stage(seconds: int = 300, rate: float = 60.0) -> dict[str, Any]:
    """The reference mode on the two-stage pipeline (examples/pipelines/two-stage.yaml,
    resnet18 -> bert-tiny, static 3 x 1 core at batch 4 per stage) at `rate` req/s of
    Poisson arrivals for `seconds`: requests, stage visits and requests per second of wall."""
    from tidal.profiling import load_reference
    from tidal.sim.run import load_pipeline

    prof = load_reference()
    pipe = load_pipeline("two-stage", prof)
    cfg = SimConfig(slo_ms=1000, mode="reference", nodes=1, cores_per_node=16)
    kw = {"replicas": 3, "cores": 1.0, "batch": 4}
    rates = np.full(seconds, rate)
    clock = MonotonicClock()
    t0 = clock.now()
    r = simulate(pipe, prof, rates, "static", cfg, policy_kwargs=kw)
    wall = clock.now() - t0
    return {
        "pipeline": "two-stage",
        "requests": r.requests,
        "wall_s": round(wall, 3),
        "requests_per_s": round(r.requests / wall, 1),
        "slo_violation_rate": round(r.slo_violation_rate, 6),
    }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def bench_long_replay(
    days: float = 22.0, policy: str = "static", reference: bool = True
) -> dict[str, Any]:
    """Replay `days` days of the Twitter trace (or its synthetic stand-in); returns requests,
    wall_s, requests_per_s, trace, note, the reference mode's two-stage figure (unless
    `reference` is False) and the load average at start and end."""
    load0 = _load()
    pipe, prof = _resnet18()
    rates, trace, note = long_trace(days)
    kw = STATIC_PEAK if policy == "static" else {}
    cfg = SimConfig(slo_ms=750, mode="fast", nodes=1, cores_per_node=64)
    simulate(pipe, prof, rates[:60], policy, cfg, policy_kwargs=kw)  # compile / load the kernel
    clock = MonotonicClock()
    t0 = clock.now()
    r = simulate(pipe, prof, rates, policy, cfg, policy_kwargs=kw)
    wall = clock.now() - t0
    out: dict[str, Any] = {
        "requests": r.requests,
        "wall_s": round(wall, 3),
        "requests_per_s": round(r.requests / wall, 1),
        "days": days,
        "policy": policy,
        "mode": r.mode,
        "slo_violation_rate": round(r.slo_violation_rate, 6),
        "trace": trace,
    }
    if note:
        out["note"] = note
    if reference:
        out["reference_two_stage"] = bench_reference_two_stage()
    out["loadavg_start"] = load0
    out["loadavg_end"] = _load()
    return out


def bench_scale(seconds: int = 60) -> dict[str, Any]:
    """Wall times of a 100 x 16-core cluster with 1,600 replicas and of a 10-stage pipeline."""
    from tidal.core.profile import LatencyFit, VariantProfile

    clock = MonotonicClock()
    pipe, prof = _resnet18()
    cfg = SimConfig(slo_ms=750, mode="fast", nodes=100, cores_per_node=16)
    # 1,600 one-core replicas of ResNet-18 at batch 4 carry ~1,600 x 14.5 = 23 k req/s.
    kw = {"replicas": 1600, "cores": 1.0, "batch": 4}
    rates = np.full(seconds, 20_000.0)
    t0 = clock.now()
    big = simulate(pipe, prof, rates, "static", cfg, policy_kwargs=kw)
    big_wall = clock.now() - t0
    fit = LatencyFit(gamma=10.0, delta=1.0, epsilon=5.0, eta=1.0, p99_ratio=1.2)
    variants = {f"v{i}": VariantProfile(name=f"v{i}", accuracy=0.9, fit=fit) for i in range(10)}
    ten = PipelineSpec(
        name="ten",
        stages=[StageSpec(name=f"s{i}", task="t", variants=[f"v{i}"]) for i in range(10)],
    )
    t0 = clock.now()
    deep = simulate(
        ten,
        ProfileSet(variants=variants),
        np.full(seconds, 200.0),
        "static",
        SimConfig(slo_ms=1000, mode="reference", nodes=4, cores_per_node=16),
        # l(4, 1 core) = 50 ms: 4 replicas of each stage carry 320 req/s.
        policy_kwargs={"replicas": 4, "cores": 1.0, "batch": 4},
    )
    deep_wall = clock.now() - t0
    return {
        "cluster_100x16": {
            "replicas": 1600,
            "requests": big.requests,
            "wall_s": round(big_wall, 3),
            "requests_per_s": round(big.requests / big_wall, 1),
            "slo_violation_rate": round(big.slo_violation_rate, 6),
        },
        "pipeline_10_stages": {
            "requests": deep.requests,
            "wall_s": round(deep_wall, 3),
            "requests_per_s": round(deep.requests / deep_wall, 1),
            "slo_violation_rate": round(deep.slo_violation_rate, 6),
        },
    }
