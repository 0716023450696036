"""Simulator benchmark: `python benchmarks/bench_sim.py [--days D] [--scale]` prints JSON.

Same figures as `tidal bench sim --json` (long Twitter replay in the fast mode), plus, with
`--scale`, the 100-node x 16-core cluster with 1,600 replicas and the 10-stage pipeline.
Figures only: nothing here is asserted by tests.
"""

from __future__ import annotations

import argparse
import json

from tidal.bench.sim import bench_long_replay, bench_scale


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--days", type=float, default=22.0)
    ap.add_argument("--policy", default="static")
    ap.add_argument("--scale", action="store_true")
    a = ap.parse_args()
    out = bench_long_replay(a.days, a.policy)
    if a.scale:
        out["scale"] = bench_scale()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
