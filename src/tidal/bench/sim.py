"""Simulator benchmarks (figures, never asserted by tests).

- `bench_long_replay`: the first `days` days of the Twitter trace (22 days = 121 M requests)
  through a one-stage ResNet-18 service in the fast mode, per-request outcomes aggregated in
  bounded memory. Prints simulated requests per second of wall time.
- `bench_scale`: a 100-node x 16-core cluster with 1,600 replicas (fast mode), and a 10-stage
  pipeline (reference mode), with their wall times.
"""

from __future__ import annotations

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


def bench_long_replay(days: float = 22.0, policy: str = "static") -> dict[str, Any]:
    """Replay `days` days of the Twitter trace; returns requests, wall_s, requests_per_s."""
    from tidal.workload.twitter import full_trace

    pipe, prof = _resnet18()
    rates = full_trace()[: int(days * 86400)].astype(np.float64)
    kw = STATIC_PEAK if policy == "static" else {}
    cfg = SimConfig(slo_ms=750, mode="fast", nodes=1, cores_per_node=64)
    simulate(pipe, prof, rates[:60], policy, cfg, policy_kwargs=kw)  # compile / load the kernel
    clock = MonotonicClock()
    t0 = clock.now()
    r = simulate(pipe, prof, rates, policy, cfg, policy_kwargs=kw)
    wall = clock.now() - t0
    return {
        "requests": r.requests,
        "wall_s": round(wall, 3),
        "requests_per_s": round(r.requests / wall, 1),
        "days": days,
        "policy": policy,
        "mode": r.mode,
        "slo_violation_rate": round(r.slo_violation_rate, 6),
    }


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
