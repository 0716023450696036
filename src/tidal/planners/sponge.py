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
budget (Sponge serves one model).
Fixed: the stages' cores are constrained jointly by the node(s): each stage's single replica
must fit a node and all of them together must be placeable (first-fit decreasing). Since each
stage's choice is already its fewest cores, the joint minimum is the per-stage minima when
they fit; when they do not, no plan meets every constraint and the best effort scales the
stages' cores down proportionally until they fit (flagged infeasible). (Earlier: each stage
was capped at 16 cores separately, so two stages planned 28-29 cores on a 16-core node.)
Headroom (project default; the prototype has only the 0.9 budget margin): the throughput row
is ``h(b,c)*utilization >= lambda`` with `utilization` 0.8.
Solve: bounded by `node_limit` (deterministic), not wall time.
Infeasible: the largest c and the batch violating the fewest deadlines (max throughput on
ties), flagged ``feasible=False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from tidal.core.errors import TidalError
from tidal.core.plan import Plan, StagePlan
from tidal.core.profile import VariantProfile
from tidal.planners.base import (
    RESIZE_IN_PLACE,
    PlanContext,
    PlannerOptions,
    VariantChoice,
    register,
)
from tidal.planners.common import (
    EPS,
    check_context,
    fits,
    max_cores_per_replica,
    min_cores_per_replica,
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


class SpongeOptions(PlannerOptions):
    """Options of `sponge` (defaults: the prototype's, saeid93/sponge, unless stated)."""

    max_cores: int = Field(16, ge=1, le=1024, description="Largest cores of the replica.")
    max_batch: int = Field(16, ge=1, le=256, description="Largest batch considered.")
    margin: float = Field(
        0.9, gt=0, le=1, description="Safety margin on each remaining budget (prototype 0.9)."
    )
    variant: VariantChoice = Field(None, description="Fixed variant per stage.")
    utilization: float = Field(
        0.8, gt=0, le=1, description="Target utilisation (headroom); project default 0.8."
    )
    node_limit: int = Field(
        5000, ge=1, le=10**7, description="Branch-and-bound node limit of the IP."
    )
    use_solver: bool = Field(
        False, description="Solve the presolved IP with HiGHS (same answer as the argmin)."
    )


@register("sponge")
class Sponge:
    """Sponge's per-second vertical scaler (one replica per stage)."""

    name = "sponge"
    interval_s = 1.0
    resize_mode = RESIZE_IN_PLACE
    Options = SpongeOptions

    def __init__(
        self,
        max_cores: int = 16,
        max_batch: int = 16,
        margin: float = 0.9,
        variant: VariantChoice = None,
        utilization: float = 0.8,
        node_limit: int = 5000,
        use_solver: bool = False,
    ) -> None:
        if max_cores < 1 or max_batch < 1:
            raise TidalError(f"sponge: max_cores ({max_cores}) and max_batch ({max_batch}) >= 1")
        if not 0 < margin <= 1:
            raise TidalError(f"sponge: margin must be in (0, 1], got {margin}")
        self.max_cores, self.max_batch, self.margin = max_cores, max_batch, margin
        self.variant, self.utilization, self.node_limit = variant, utilization, node_limit
        self.use_solver = use_solver

    def choose(
        self, profile: VariantProfile, lam: float, budgets_ms: np.ndarray, slo_ms: float, c_max: int
    ) -> SpongeChoice:
        """Solve the IP for one stage (budgets in EDF order, ms)."""
        lo = max(1, math.ceil(min_cores_per_replica(profile) - 1e-9))
        cores = list(range(min(lo, c_max), c_max + 1))  # inside the measured range
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
            (thr_all * self.utilization >= lam - 1e-9)
            & (fresh <= self.margin * slo_ms + 1e-9)
            & np.all(finish <= limit[:, None] + 1e-9, axis=0)
        )
        pairs = [p for p, k in zip(all_pairs, keep, strict=True) if k]
        sol_pair: tuple[int, int] | None = None
        if pairs and not self.use_solver:
            # after the exact presolve the IP is one choice row: its optimum is the argmin of
            # the objective (identical to HiGHS' answer; the property test checks both)
            sol_pair = min(pairs, key=lambda bc: bc[1] * (self.max_batch + 1) + bc[0])
        elif pairs:
            m = Model(f"sponge[{profile.name}]", sense="min")
            xs = [
                m.var(f"x[b={b},c={c}]", binary=True, obj=c * (self.max_batch + 1) + b)
                for b, c in pairs
            ]
            m.constrain({x: 1.0 for x in xs}, eq=1.0, name="one (b, c)")
            sol = m.solve(self.node_limit)
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
            viol = int(np.sum(finish[:, k] > limit))
            viol += int(thr_all[k] * self.utilization < lam)
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
        plan = Plan(stages=tuple(stages))
        if not fits(plan, ctx.capacity):
            reasons.append(
                f"the stages' fewest cores ({plan.total_cores:g}) do not fit "
                f"{ctx.capacity.nodes} x {ctx.capacity.cores_per_node:g} cores"
            )
            stages = shrink_to_fit(stages, ctx)
        return Plan(
            stages=tuple(stages), feasible=not reasons, reason="; ".join(reasons)
        ), ctx.state


def shrink_to_fit(stages: list[StagePlan], ctx: PlanContext) -> list[StagePlan]:
    """Best effort for plans over the nodes' cores: scale every stage's integer cores down in
    proportion (at least 1 each) until the replicas can be placed."""
    total = sum(sp.cores for sp in stages)
    scale = ctx.capacity.total_cores / max(total, EPS)
    while True:
        out = [
            sp.model_copy(update={"cores": float(max(1, int(sp.cores * scale + EPS)))})
            for sp in stages
        ]
        if fits(Plan(stages=tuple(out)), ctx.capacity) or all(sp.cores <= 1 for sp in out):
            return out
        scale *= 0.95
