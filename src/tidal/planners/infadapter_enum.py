"""InfAdapter's problem solved exactly by enumeration, as the prototype does (it enumerates
configurations): per stage every vector of core counts, then a dynamic programme over stages
for the shared budget, and the load-time term by thresholds.

The problem (`tidal.planners.infadapter`): per stage and variant m, cores n_m in {0} U
[low_m, top_m], a traffic share s_m; maximize ``sum acc_m s_m - kappa sum n_m - mu LC`` with
``sum_m s_m = 1`` per stage, ``lam s_m <= cap_m(n_m)``, ``sum n <= budget`` over all stages and
``LC = max load time of the variants switched on that are not running``.

Exactness: for fixed core counts the best shares are the fractional knapsack's: the most
accurate variants filled first (the stage is infeasible if the capacities cannot carry lam);
so a stage's value is a function of its core vector. For a load-time threshold L (a variant
not running may be switched on only if its load time is <= L), the stages are independent
but for the budget: the best total is a (max, +) convolution of the stages' best value per
core count. The optimum is the best over L in {0} U {load times} of that total minus
``mu L`` (a configuration whose LC is L* is feasible at L = L*, with its exact penalty).
Ties between equal objectives are broken deterministically (fewest cores first, then the
enumeration order). Used when a stage has at most `MAX_VECTORS` core vectors within the budget
(the default 20-core budget and 5 variants: ~20,000); larger instances go to the MILP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_VECTORS = 200_000
"""Most core vectors enumerated for one stage before the MILP is used instead."""


@dataclass(frozen=True)
class StageVariant:
    """One variant of one stage, as the enumeration needs it."""

    name: str
    accuracy: float
    line: tuple[float, float] | None  # cap(n) = 0.8 * (a n + b)
    low: int
    top: int
    new_load_s: float  # its load time if it is not running now, else 0


def vectors(variants: Sequence[StageVariant], budget: int) -> np.ndarray | None:
    """Every vector of core counts (one column per variant) with each entry 0 or in
    [low, top] and the sum <= `budget`; None if there are more than `MAX_VECTORS`."""
    rows = np.zeros((1, 0), dtype=np.int64)
    for v in variants:
        opts = [0] + (list(range(v.low, v.top + 1)) if v.line is not None else [])
        used = rows.sum(axis=1)
        parts = [np.hstack([rows[used + k <= budget], np.full(((used + k <= budget).sum(), 1), k)])
                 for k in opts]  # fmt: skip
        rows = np.vstack(parts)
        if len(rows) > MAX_VECTORS:
            return None
    return rows


@dataclass(frozen=True)
class StageTable:
    """Per stage: for every feasible core vector its cores, value (acc - kappa cores) and
    new load time, plus the vectors and shares to rebuild the choice."""

    cores: np.ndarray
    value: np.ndarray
    new_load: np.ndarray
    rows: np.ndarray
    shares: np.ndarray
    order: np.ndarray  # rows by cores, then value (highest first), then enumeration order


def stage_table(
    variants: Sequence[StageVariant],
    lam: float,
    budget: int,
    kappa: float,
    max_variants: int | None,
) -> StageTable | None:
    """Every feasible configuration of one stage; None if there are too many to enumerate."""
    rows = vectors(variants, budget)
    if rows is None:
        return None
    rows = rows[rows.sum(axis=1) > 0]
    on = rows > 0
    n_on = on.sum(axis=1)
    ok = n_on <= (max_variants or len(variants))
    caps = np.zeros(rows.shape)
    for j, v in enumerate(variants):
        if v.line is not None:
            caps[:, j] = np.where(on[:, j], 0.8 * (v.line[0] * rows[:, j] + v.line[1]), 0.0)
    ok &= ~np.any(on & (caps < 0), axis=1)
    order = sorted(range(len(variants)), key=lambda j: -variants[j].accuracy)
    shares = np.zeros(rows.shape)
    left = np.ones(len(rows))
    for j in order:
        # (near) zero load: any on variant can take the whole share
        room = caps[:, j] / lam if lam > 1e-9 else np.where(on[:, j], np.inf, 0.0)
        take = np.where(on[:, j], np.minimum(left, np.maximum(room, 0.0)), 0.0)
        shares[:, j] = take
        left = left - take
    ok &= left <= 1e-9
    acc = np.asarray([v.accuracy for v in variants])
    loads = np.asarray([v.new_load_s for v in variants])
    value = shares @ acc - kappa * rows.sum(axis=1)
    new_load = np.where(on, loads[None, :], 0.0).max(axis=1)
    cores, value, idx = rows.sum(axis=1)[ok], value[ok], np.arange(int(ok.sum()))
    by_cores = np.lexsort((idx, -value, cores))
    return StageTable(cores, value, new_load[ok], rows[ok], shares[ok], by_cores)


def best_per_cores(t: StageTable, limit: float, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Best value and its row index for every exact core count 0..budget, using only
    configurations whose new load time is <= `limit` (-inf / -1 where none); among equal
    values the first in enumeration order."""
    val = np.full(budget + 1, -np.inf)
    arg = np.full(budget + 1, -1, dtype=np.int64)
    order = t.order[t.new_load[t.order] <= limit + 1e-12]
    if not len(order):
        return val, arg
    cores, first = np.unique(t.cores[order], return_index=True)
    val[cores] = t.value[order[first]]
    arg[cores] = order[first]
    return val, arg


def solve(tables: Sequence[StageTable], budget: int, mu: float) -> tuple[list[int], float] | None:
    """The best row per stage (indices into each table) and the objective, or None."""
    limits = sorted({0.0, *(float(x) for t in tables for x in np.unique(t.new_load))})
    best: tuple[list[int], float] | None = None
    bound = math.inf  # the best total with no load-time limit: no threshold can beat it
    for lim in [limits[-1], *limits]:
        if best is not None and bound - mu * lim <= best[1] + 1e-12:
            break  # larger limits only cost more

        memo: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # equal stages share a table
        for t in tables:
            if id(t) not in memo:
                memo[id(t)] = best_per_cores(t, lim, budget)
        per = [memo[id(t)] for t in tables]
        total = np.full(budget + 1, -np.inf)
        total[0] = 0.0
        picks: list[np.ndarray] = []
        for val, _ in per:  # (max, +) convolution over the budget
            new = np.full(budget + 1, -np.inf)
            pick = np.full(budget + 1, -1, dtype=np.int64)
            for k in range(budget + 1):
                if not np.isfinite(val[k]):
                    continue
                cand = total[: budget + 1 - k] + val[k]
                seg = new[k:]
                better = cand > seg + 1e-12
                seg[better] = cand[better]
                pick[k:][better] = k
            picks.append(pick)
            total = new
        if not np.isfinite(total).any():
            if math.isinf(bound):
                return None  # infeasible even with every variant allowed
            continue
        u = int(np.argmax(total))  # the fewest cores among equal totals
        if math.isinf(bound):
            bound = float(total[u])
            continue  # the bound pass: the thresholds follow in increasing order
        obj = float(total[u]) - mu * lim
        if best is not None and obj <= best[1] + 1e-12:
            continue
        rows: list[int] = []
        for s in range(len(tables) - 1, -1, -1):
            k = int(picks[s][u])
            rows.append(int(per[s][1][k]))
            u -= k
        rows.reverse()
        best = (rows, obj)
    return best


__all__ = ["MAX_VECTORS", "StageTable", "StageVariant", "solve", "stage_table", "vectors"]
