"""Benchmark: batch service times of one worker under its CPU quota, at open-loop Poisson
arrivals (JSON lines, one per rate): is a fractional-core replica's batch time a function of
its load (a batch that finds its quota runs at a whole CPU's speed, one that does not waits
for the next period)? `tidal.sim.latency.quota_run` models this; docs/simulator.md compares.

    .venv/bin/python benchmarks/bench_quota.py \\
        [--variant resnet18] [--cores 0.5] [--rates 2,5,8,10] [--seconds 15] [--batch 1]

Requests wait in arrival order for the one worker (a batch at a time); the time of each
`WorkerHandle.infer` is its service time. Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from tidal.dataplane.worker import WorkerHandle
from tidal.models.catalog import get_variant


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variant", default="resnet18")
    ap.add_argument("--cores", type=float, default=0.5)
    ap.add_argument("--rates", default="2,5,8,10", help="arrivals per second, comma-separated")
    ap.add_argument("--seconds", type=float, default=15.0, help="per rate")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    x = get_variant(a.variant).input.sample(a.batch, seed=0)
    w = WorkerHandle.start(a.variant, a.cores)
    try:
        for _ in range(5):
            w.infer(x)
        for rate in (float(r) for r in a.rates.split(",")):
            rng = np.random.default_rng(a.seed)
            arrivals = np.cumsum(rng.exponential(1.0 / rate, max(1, int(rate * a.seconds))))
            t0 = time.monotonic()
            svc: list[float] = []
            for at in arrivals:
                wait = at - (time.monotonic() - t0)
                if wait > 0:
                    time.sleep(wait)
                s = time.monotonic()
                w.infer(x)
                svc.append((time.monotonic() - s) * 1000.0)
            v = np.asarray(svc)
            row = {
                "variant": a.variant,
                "cores": a.cores,
                "batch": a.batch,
                "rate": rate,
                "batches": len(v),
                "mean_ms": round(float(v.mean()), 1),
                "std_ms": round(float(v.std()), 1),
                "p10_ms": round(float(np.percentile(v, 10)), 1),
                "p50_ms": round(float(np.percentile(v, 50)), 1),
                "p90_ms": round(float(np.percentile(v, 90)), 1),
                "p99_ms": round(float(np.percentile(v, 99)), 1),
            }
            print(json.dumps(row), flush=True)
    finally:
        w.stop()


if __name__ == "__main__":
    main()
