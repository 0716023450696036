"""Data-plane benchmark: Tidal vs Ray Serve vs a bare ASGI app (same as `tidal bench dataplane`).

    python benchmarks/bench_dataplane.py [--duration 8] [--skip-ray] [--workloads noop,resnet18]

Prints JSON figures; see tidal.bench.dataplane for what is measured and how.
"""

from __future__ import annotations

import argparse
import json

from tidal.bench.dataplane import run_bench

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--workloads", default="noop,resnet18")
    a = ap.parse_args()
    out = run_bench(
        duration=a.duration,
        connections=a.connections,
        ray=not a.skip_ray,
        workloads=a.workloads.split(","),
        echo=print,
    )
    print(json.dumps(out, indent=2))
