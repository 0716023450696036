"""How `tidal` moves between plans: the interim that avoids a dip while replicas start or
cores resize, the plans that need one (two changes), the most the nodes carry under
overload, the change budget, and when arrivals stopped (and the replicas an idle plan keeps).
Pure functions; `tidal.planners.tidal` keeps the state."""

from __future__ import annotations

import math
from dataclasses import replace

from tidal.core.plan import Plan, StagePlan
from tidal.core.profile import VariantProfile
from tidal.planners.base import PlanContext
from tidal.planners.common import current_stage, fits
from tidal.planners.themis import Themis


def interim_move(ctx: PlanContext, target: Plan, r_now: float | None = None) -> Plan | None:
    """Go to `target` without a dip in capacity while changes take effect: where it adds
    replicas but shrinks cores, keep the larger cores until the new replicas are ready (a
    cold start); where it removes replicas but grows cores, keep the replicas until the
    larger cores are in place (an in-place resize is not instant, removing is). The
    interim must fit the nodes; if it does not, the target at once, except (with
    `r_now`) None when the remaining replicas at today's cores could not carry `r_now`
    for the resize: that dip would refuse requests. The plan to apply now: the interim
    (the caller moves on to `target` once the changes took effect), the target, or None."""
    stages: list[StagePlan] = []
    interim_needed = False
    dip = math.inf  # the least throughput of a shrinking stage while the move takes effect
    for sp in target.stages:
        cur = current_stage(ctx, sp.stage)
        if cur is not None and sp.replicas > cur.replicas and cur.cores > sp.cores:
            interim_needed = True
            stages.append(sp.model_copy(update={"cores": cur.cores, "batch": cur.batch}))
        elif cur is not None and sp.replicas < cur.replicas and sp.cores > cur.cores:
            interim_needed = True
            # today's batch until the cores are in place (a larger batch on the old
            # cores would be slower than the SLO allows)
            stages.append(sp.model_copy(update={"replicas": cur.replicas, "batch": cur.batch}))
        else:
            stages.append(sp)
        if cur is not None and (sp.replicas < cur.replicas or sp.cores < cur.cores):
            # applied at once, only the replicas both plans have run, on the smaller
            # cores, until the new replicas start and the larger cores are in place
            v = next(s.variants for s in ctx.stages if s.stage == sp.stage)
            prof = next((p for p in v if p.name == sp.variants[0].name), v[0])
            n, c = min(sp.replicas, cur.replicas), min(sp.cores, cur.cores)
            dip = min(dip, n * prof.throughput(sp.batch, c))
    interim = Plan(stages=tuple(stages))
    if interim_needed and fits(interim, ctx.capacity):
        return interim
    if r_now is not None and dip < r_now:
        return None
    return target


def overload_plan(
    full: Themis, dp: Themis, ctx: PlanContext, chosen: list[VariantProfile], lam: float
) -> Plan:
    """Overload: no plan carries `lam` with headroom on the nodes. Serve as much as the
    nodes can: the cheapest plan (at utilisation 1) for the highest rate any plan that
    fits carries within the SLO (bisection), kept while the plan in force carries >= 95%
    of that (no flapping); its reason starts with "overload:". Flagged infeasible only
    when nothing fits at all. `full` is Themis at utilisation 1, `dp` the planner's own."""
    reason = (
        f"no plan carries {lam:.4g} req/s within the {ctx.slo_ms:g} ms SLO on "
        f"{ctx.capacity.nodes} x {ctx.capacity.cores_per_node:g} cores"
    )
    lo, hi, best = 0.0, lam, None
    for _ in range(10):
        mid = (lo + hi) / 2
        p = full.solve(replace(ctx, forecast=mid), chosen)
        if p is not None and fits(p, ctx.capacity):
            lo, best = mid, p
        else:
            hi = mid
    cur = ctx.current
    near = best is None or (
        cur is not None and max_rps(cur, chosen) >= 0.95 * max_rps(best, chosen)
    )
    if cur is not None and near and fits(cur, ctx.capacity):
        best = cur  # already (nearly) the most the nodes carry: no flapping
    if best is None:
        return dp.fastest(replace(ctx, forecast=lam), chosen, reason)
    # the most the nodes carry within the SLO: a plan to apply (the controller keeps the
    # last *feasible* plan, so flagging this one would leave a smaller plan in force);
    # the reason says the load exceeds it
    carried = max_rps(best, chosen)
    return best.model_copy(
        update={"feasible": True, "reason": f"overload: {reason}; carries {carried:.4g}"}
    )


def two_step(ctx: PlanContext, target: Plan) -> bool:
    """Some stage of `target` adds replicas but shrinks cores, or removes replicas but grows
    cores: moving there without a dip takes an interim plan (`interim_move`)."""
    for sp in target.stages:
        cur = current_stage(ctx, sp.stage)
        if cur is not None and (sp.replicas - cur.replicas) * (sp.cores - cur.cores) < 0:
            return True
    return False


def max_rps(plan: Plan, chosen: list[VariantProfile]) -> float:
    """The rate a plan carries at full utilisation: its slowest stage's throughput."""
    return min(
        sp.replicas * v.throughput(sp.batch, sp.cores)
        for sp, v in zip(plan.stages, chosen, strict=False)
    )


def arrivals_stopped(
    history: tuple[float, ...], window: int, p: float
) -> tuple[float, float] | None:
    """Arrivals stopped: the trailing seconds of `history` with no arrival are z, and z
    zero seconds at the mean rate m of the `window` seconds before them would happen with
    probability exp(-m z) < `p` under Poisson arrivals. Then (the highest rate consistent
    with z zero seconds at that confidence, -ln(p) / z; m), else None (also when `p` is 0,
    no second is zero, or nothing came before the zeros)."""
    if p <= 0:
        return None
    n, z = len(history), 0
    while z < n and history[n - 1 - z] <= 0:
        z += 1
    before = history[max(0, n - z - window) : n - z]
    if z == 0 or not before:
        return None
    m = sum(before) / len(before)
    if m * z <= -math.log(p):
        return None
    return -math.log(p) / z, m


def keep_replicas(
    plan: Plan, chosen: list[VariantProfile], grids: list[list[float]], rate: float, util: float
) -> list[int]:
    """Per stage, the fewest replicas (at most today's, at least 1) that carry `rate` at
    `util` once grown in place to the largest cores of the stage's grid at today's batch:
    the replicas an idle plan keeps so that a return of `rate` needs no cold start."""
    out = []
    for sp, v, g in zip(plan.stages, chosen, grids, strict=True):
        per = v.throughput(sp.batch, max(g)) * util
        need = math.ceil(rate / per - 1e-9) if per > 0 else sp.replicas
        out.append(max(1, min(sp.replicas, need)))
    return out


def within_budget(
    changes: tuple[float, ...],
    start: float,
    now: float,
    per_hour: int,
    credit: int = 0,
) -> bool:
    """One more change at `now`, on top of `changes` (their times in the last hour), stays
    within `per_hour`, counted pro rata since `start` over a first hour (a 5-minute run
    allows 5 of 60; urgent changes count too), plus `credit`."""
    elapsed = min(3600.0, max(0.0, now - start))
    return len(changes) + 1 <= per_hour * elapsed / 3600.0 + credit + 1e-9


__all__ = [
    "arrivals_stopped",
    "interim_move",
    "keep_replicas",
    "max_rps",
    "overload_plan",
    "two_step",
    "within_budget",
]
