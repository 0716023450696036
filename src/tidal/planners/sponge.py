"""`sponge`: in-place vertical scaling for dynamic per-request SLOs (Sponge, arXiv 2404.00704).

Every second choose cores c in 1..c_max and batch b in 1..b_max of the stage's single replica,
minimizing c, then b, such that (a) ``h(b, c) >= lambda`` and (b) every request queued in EDF
order, served in batches of b back-to-back, finishes within `margin` x its remaining budget.

Faithful: the objective (fewest cores, then smallest batch), the EDF feasibility check with the
prototype's 0.9 safety margin, integer cores up to the node, in-place actuation
(``resize_mode = "in_place"``: no restart), interval 1 s.
Reconstructed: the paper's integer program is written here as a real IP solved by HiGHS:
binaries ``x[b,c]`` (exactly one chosen), throughput ``sum x*h >= lambda`` and one row per
queued request ``sum x[b,c] * finish_i(b,c) <= margin*budget_i`` with
``finish_i = (i // b + 1) * l99(b, c)``; objective ``sum x[b,c] * (c*(b_max+1) + b)``
(lexicographic). A fresh request (budget = SLO) must also fit: ``(b-1)/lambda + l99(b,c)``.
Exact presolve: since exactly one x is 1, each row ``sum_k x_k f_k <= L`` holds iff the chosen
pair alone satisfies ``f_k <= L``; pairs violating any row are dropped (vectorized), and HiGHS
solves the reduced model (the choice row and the objective).
The prototype enumerates; the tests check the IP against that enumeration.
Extended: for a multi-stage pipeline each stage gets an equal share of the SLO and of every
budget (Sponge serves one model). Fixed: none needed.
Infeasible: the largest c and the batch violating the fewest deadlines (max throughput on
ties), flagged ``feasible=False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tidal.core.errors import TidalError
from tidal.core.plan import Plan, StagePlan
from tidal.core.profile import VariantProfile
from tidal.planners.base import RESIZE_IN_PLACE, PlanContext, register
from tidal.planners.common import (
    check_context,
    max_cores_per_replica,
    pick_variants,
    queue_ms,
    stage_plan,
)
from tidal.planners.solver import Model


@dataclass(frozen=True)
class SpongeChoice:
    """The decision for one stage and whether it meets every constraint."""

    cores: int
    batch: int
    feasible: bool
    violations: int


def finish_times_ms(profile: VariantProfile, n_queued: int, batch: int, cores: float) -> np.ndarray:
    """Completion time (ms from now) of each of `n_queued` EDF-ordered requests."""
    return (np.arange(n_queued) // batch + 1) * profile.p99_ms(batch, cores)


@register("sponge")
class Sponge:
    """Sponge's per-second vertical scaler (one replica per stage)."""

    name = "sponge"
    interval_s = 1.0
    resize_mode = RESIZE_IN_PLACE

    def __init__(
        self,
        max_cores: int = 16,
        max_batch: int = 16,
        margin: float = 0.9,
        variant: dict[str, str] | str | int | None = None,
        time_limit_s: float = 1.0,
    ) -> None:
        if max_cores < 1 or max_batch < 1:
            raise TidalError(f"sponge: max_cores ({max_cores}) and max_batch ({max_batch}) >= 1")
        if not 0 < margin <= 1:
            raise TidalError(f"sponge: margin must be in (0, 1], got {margin}")
        self.max_cores, self.max_batch, self.margin = max_cores, max_batch, margin
        self.variant, self.time_limit_s = variant, time_limit_s

    def choose(
        self, profile: VariantProfile, lam: float, budgets_ms: np.ndarray, slo_ms: float, c_max: int
    ) -> SpongeChoice:
        """Solve the IP for one stage (budgets in EDF order, ms)."""
        cores = list(range(1, c_max + 1))
        batches = list(range(1, self.max_batch + 1))
        all_pairs = [(b, c) for c in cores for b in batches]
        budgets = np.sort(np.asarray(budgets_ms, dtype=np.float64))
        limit = self.margin * budgets
        lat = np.array([profile.p99_ms(b, c) for b, c in all_pairs])
        bs = np.array([b for b, _ in all_pairs])
        # finish[i, k]: completion of queued request i under pair k (EDF, batches back-to-back)
        finish = (np.arange(len(budgets))[:, None] // bs[None, :] + 1) * lat[None, :]
        fresh = np.array([queue_ms(b, lam) for b, _ in all_pairs]) + lat
        thr_all = np.array([profile.throughput(b, c) for b, c in all_pairs])
        # Exact presolve: exactly one x is 1, so every row sum_k x_k f_k <= L holds iff the
        # chosen pair alone satisfies f_k <= L: drop each pair that violates any row.
        keep = (
            (thr_all >= lam - 1e-9)
            & (fresh <= self.margin * slo_ms + 1e-9)
            & np.all(finish <= limit[:, None] + 1e-9, axis=0)
        )
        pairs = [p for p, k in zip(all_pairs, keep, strict=True) if k]
        sol_pair: tuple[int, int] | None = None
        if pairs:
            m = Model(f"sponge[{profile.name}]", sense="min")
            xs = [
                m.var(f"x[b={b},c={c}]", binary=True, obj=c * (self.max_batch + 1) + b)
                for b, c in pairs
            ]
            m.constrain({x: 1.0 for x in xs}, eq=1.0, name="one (b, c)")
            sol = m.solve(self.time_limit_s)
            if sol.ok:
                sol_pair = next(p for p, x in zip(pairs, xs, strict=True) if sol.on(x))
        if sol_pair is not None:
            b, c = sol_pair
            return SpongeChoice(c, b, True, 0)
        # Best effort: most cores; batch with fewest violated deadlines, then most throughput.
        best: tuple[int, float, int] | None = None
        for k, (b, c) in enumerate(all_pairs):
            if c != c_max:
                continue
            viol = int(np.sum(finish[:, k] > limit)) + int(thr_all[k] < lam)
            viol += int(fresh[k] > self.margin * slo_ms)
            key = (viol, -thr_all[k], b)
            if best is None or key < best:
                best = key
        assert best is not None
        return SpongeChoice(c_max, best[2], False, best[0])

    def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
        check_context(ctx)
        chosen = pick_variants(ctx, self.variant)
        share = 1.0 / len(ctx.stages)
        budgets = np.asarray(ctx.budgets_ms, dtype=np.float64) * share
        stages: list[StagePlan] = []
        reasons = []
        for st, v in zip(ctx.stages, chosen, strict=True):
            c_max = max(1, int(min(self.max_cores, max_cores_per_replica(v, ctx.capacity))))
            ch = self.choose(v, ctx.load, budgets, ctx.slo_ms * share, c_max)
            if not ch.feasible:
                reasons.append(
                    f"stage {st.stage!r}: {ch.violations} deadline/throughput constraints "
                    f"unmet even at {c_max} cores"
                )
            stages.append(stage_plan(st.stage, v.name, 1, float(ch.cores), ch.batch))
        return Plan(
            stages=tuple(stages), feasible=not reasons, reason="; ".join(reasons)
        ), ctx.state
