"""`tidal bench planners`: decision time per policy for 1-, 3- and 10-stage pipelines.

Synthetic profiles (Sponge's fit scaled per variant, `tidal.planners.synthetic`; labelled, not
measured), 5 variants per stage, 50 req/s, 16-core nodes. Each repeat is a fresh planner on
the same context, timed with the injected clock. Reports the median and the 95th percentile
(the goal: p95 <= 50 ms at 3 stages) and the machine's load average at start and end, since
timings on a shared machine vary with its load; and the CPU time of the decision
(`time.process_time`, all threads of the process, median and p95), which a loaded machine
inflates much less: on 2 cores at load average 20 a 1 ms decision can take 60 ms of wall time
when the thread is preempted.
`sponge+queue100`: Sponge with 100 queued
requests of 300-1000 ms budgets.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from typing import Any

import numpy as np

from tidal.core.clock import Clock, MonotonicClock
from tidal.planners.base import available, create
from tidal.planners.synthetic import synthetic_context


def p95(xs: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    s = sorted(xs)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]


def bench(
    stages: tuple[int, ...] = (1, 3, 10),
    n_variants: int = 5,
    repeat: int = 20,
    rps: float = 50.0,
    policies: list[str] | None = None,
    clock: Clock | None = None,
) -> dict[str, Any]:
    """Median and p95 decision time (ms) per policy and pipeline length."""
    clock = clock or MonotonicClock()
    names = policies or available()
    out: dict[str, Any] = {
        "profiles": "synthetic (Sponge's ResNet fit scaled per variant; see planners.synthetic)",
        "variants_per_stage": n_variants,
        "rps": rps,
        "repeat": repeat,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "median_ms": {},
        "p95_ms": {},
        "cpu_median_ms": {},
        "cpu_p95_ms": {},
        "feasible": {},
    }
    runs: list[tuple[str, str, tuple[float, ...]]] = [(n, n, ()) for n in names]
    if "sponge" in names:
        queue = tuple(float(b) for b in np.linspace(300.0, 1000.0, 100))
        runs.append(("sponge+queue100", "sponge", queue))
    for label, name, budgets in runs:
        out["median_ms"][label] = {}
        out["p95_ms"][label] = {}
        out["cpu_median_ms"][label] = {}
        out["cpu_p95_ms"][label] = {}
        out["feasible"][label] = {}
        for s in stages:
            ctx = dataclasses.replace(synthetic_context(s, n_variants, rps=rps), budgets_ms=budgets)
            times, cpu, feasible = [], [], True
            for _ in range(repeat):
                planner = create(name)
                t0, c0 = clock.now(), time.process_time()
                plan, _ = planner.plan(ctx)
                times.append((clock.now() - t0) * 1000.0)
                cpu.append((time.process_time() - c0) * 1000.0)
                feasible = plan.feasible
            out["median_ms"][label][str(s)] = round(statistics.median(times), 3)
            out["p95_ms"][label][str(s)] = round(p95(times), 3)
            out["cpu_median_ms"][label][str(s)] = round(statistics.median(cpu), 3)
            out["cpu_p95_ms"][label][str(s)] = round(p95(cpu), 3)
            out["feasible"][label][str(s)] = feasible
    out["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return out
