"""Median planner decision time for 1-, 3- and 10-stage pipelines (same as
`tidal bench planners --json`). Prints JSON; never asserted by tests."""

from __future__ import annotations

import json

from tidal.bench.planners import bench

if __name__ == "__main__":
    print(json.dumps(bench(), indent=2))
