"""Dynamic programming over pipeline stages with a discretized latency budget.

Given, per stage, a list of options (latency ms, cost, payload), choose one option per stage
minimizing total cost subject to ``sum latency <= budget``. Latencies are rounded UP to
`resolution_ms` units and the budget DOWN, so every returned choice meets the exact budget;
the result is optimal among choices whose rounded latencies fit (the tests check this against
brute force with the same rounding). Cost O(stages x options x budget/resolution), vectorized.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Option:
    """One configuration of one stage."""

    latency_ms: float
    cost: float
    payload: Any = None


def units(latency_ms: float, resolution_ms: float) -> int:
    """Latency in budget units, rounded up (conservative)."""
    return math.ceil(latency_ms / resolution_ms - 1e-9)


def budget_units(budget_ms: float, resolution_ms: float) -> int:
    """The budget in units, rounded down."""
    return math.floor(budget_ms / resolution_ms + 1e-9)


def pareto(options: Sequence[Option], resolution_ms: float) -> list[Option]:
    """Options not dominated in (rounded latency, cost): sorted by latency, cost decreasing."""
    finite = [o for o in options if math.isfinite(o.latency_ms) and math.isfinite(o.cost)]
    finite.sort(key=lambda o: (units(o.latency_ms, resolution_ms), o.cost))
    out: list[Option] = []
    for o in finite:
        if not out or o.cost < out[-1].cost - 1e-12:
            out.append(o)
    return out


def min_cost(
    stages: Sequence[Sequence[Option]], budget_ms: float, resolution_ms: float
) -> list[Option] | None:
    """The cheapest choice of one option per stage within the budget, or None if none fits."""
    u_max = budget_units(budget_ms, resolution_ms)
    if u_max < 0:
        return None
    fronts = [pareto(s, resolution_ms) for s in stages]
    if any(not f for f in fronts):
        return None
    prev = np.full(u_max + 1, np.inf)
    prev[0] = 0.0
    choices: list[np.ndarray] = []
    for front in fronts:
        cur = np.full(u_max + 1, np.inf)
        arg = np.full(u_max + 1, -1, dtype=np.int64)
        for k, o in enumerate(front):
            w = units(o.latency_ms, resolution_ms)
            if w > u_max:
                break
            cand = prev[: u_max + 1 - w] + o.cost
            seg = cur[w:]
            better = cand < seg - 1e-12
            seg[better] = cand[better]
            arg[w:][better] = k
        choices.append(arg)
        prev = cur
    if not np.isfinite(prev).any():
        return None
    u = int(np.argmin(prev))
    picked: list[Option] = []
    for s in range(len(fronts) - 1, -1, -1):
        k = int(choices[s][u])
        o = fronts[s][k]
        picked.append(o)
        u -= units(o.latency_ms, resolution_ms)
    picked.reverse()
    return picked
