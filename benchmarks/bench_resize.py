"""Benchmark: one worker resized in place 1 -> 0.5 -> 2 cores; latency at each size (JSON).

    .venv/bin/python benchmarks/bench_resize.py [--variant resnet18] [--batch 1] [--samples 30]
        [--no-priority] [--ipc]

Same as `tidal bench resize`. Prints figures; not a test (nothing asserts on wall time).
"""

from __future__ import annotations

import argparse
import json

from tidal.bench.worker import bench_ipc, bench_resize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variant", default="resnet18")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--sizes", default="1,0.5,2")
    ap.add_argument(
        "--no-priority",
        action="store_true",
        help="default CPU weight (by default the worker gets a high cgroup CPU weight so that "
        "other jobs on a shared machine do not hide the effect of its own allocation)",
    )
    ap.add_argument("--ipc", action="store_true", help="also the no-op IPC round trip")
    a = ap.parse_args()
    sizes = tuple(float(s) for s in a.sizes.split(","))
    out = bench_resize(
        a.variant, sizes, a.batch, a.samples, cpu_weight=None if a.no_priority else 262144
    )
    if a.ipc:
        out["ipc"] = bench_ipc(cpu_weight=None if a.no_priority else 262144)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
