"""`tidal`'s scale-down moves: the shrink when arrivals stopped (`idle`), the one-change
consolidation (`one_step`) and a move's follow-up on today's rates (`follow_up`). Functions
of the planner (its options, solver and checks); pure: the state is passed in and out."""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from tidal.core.plan import Plan
from tidal.core.profile import VariantProfile
from tidal.planners import tidal_moves as moves
from tidal.planners.base import PlanContext
from tidal.planners.common import current_stage, fits
from tidal.planners.tidal_state import TidalState


class Tidal(Protocol):
    """What these moves use of `tidal.planners.tidal.Tidal`."""

    slow_window_s: int
    idle_p: float
    utilization: float
    down_gain: float

    def grids(self, ctx: PlanContext, chosen: list[VariantProfile]) -> list[list[float]]: ...

    def solve(
        self,
        ctx: PlanContext,
        chosen: list[VariantProfile],
        lam: float,
        replicas: list[int] | None = None,
        cores: list[float] | None = None,
        wait_rate: float | None = None,
        fine: bool = False,
    ) -> Plan | None: ...

    def budget_left(self, ctx: PlanContext, st: TidalState) -> bool: ...

    def at_risk(
        self, ctx: PlanContext, plan: Plan, chosen: list[VariantProfile], r: float
    ) -> bool: ...


def idle(
    t: Tidal, ctx: PlanContext, st: TidalState, chosen: list[VariantProfile], lam: float
) -> tuple[Plan, TidalState] | None:
    """Arrivals stopped (`moves.arrivals_stopped`, at confidence `idle_p`): no growth, and
    a shrink at once (no `hold_s`, within the budget) to the cheapest plan for the highest
    rate the zero seconds allow, keeping the replicas that carry `lam` (the hedged level
    before the stop) grown in place (`moves.keep_replicas`): a return of the load is the
    in-place resize, not a cold start. Only if the queued requests keep their deadlines
    on it (`at_risk`) and it saves `down_gain`; once per stop (`TidalState.idle`).
    None: arrivals did not stop."""
    cur = ctx.current
    stop = moves.arrivals_stopped(ctx.rate_history, t.slow_window_s, t.idle_p)
    if stop is None or cur is None:
        return None
    if st.idle:
        return cur, st  # one change per stop: no re-shrink as the zeros go on
    keep = moves.keep_replicas(cur, chosen, t.grids(ctx, chosen), lam, t.utilization)
    idle = t.solve(ctx, chosen, stop[0], replicas=keep, wait_rate=stop[0])
    if (
        idle is None
        or not fits(idle, ctx.capacity)
        or idle.total_cores >= (1.0 - t.down_gain) * cur.total_cores - 1e-9
        or not t.budget_left(ctx, st)
        or t.at_risk(ctx, idle, chosen, stop[0])
    ):
        return cur, st
    return idle, replace(st, cheaper_since=None, target=None, bridged=False, idle=True)


def one_step(
    t: Tidal, ctx: PlanContext, chosen: list[VariantProfile], lam: float, level: float, target: Plan
) -> Plan:
    """A scale-down whose consolidation needs an interim plan (two changes: replicas one
    way, cores the other) becomes the cheapest one-change plan (today's replicas resized
    in place on the in-place grid, `in_place_step`, or today's cores) when that saves
    `down_gain` too and costs within `down_gain` of it."""
    cur = ctx.current
    reps = [current_stage(ctx, s.stage) for s in ctx.stages]
    if cur is None or any(r is None for r in reps) or not moves.two_step(ctx, target):
        return target
    n = [r.replicas for r in reps if r is not None]
    c = [r.cores for r in reps if r is not None]
    alts = [
        p
        for p in (
            t.solve(ctx, chosen, lam, replicas=n, wait_rate=level, fine=True),
            t.solve(ctx, chosen, lam, cores=c, wait_rate=level),
        )
        if p is not None
        and fits(p, ctx.capacity)
        and p.total_cores < (1.0 - t.down_gain) * cur.total_cores - 1e-9
    ]
    best = min(alts, key=lambda p: p.total_cores, default=None)
    if best is not None and best.total_cores <= (1.0 + t.down_gain) * target.total_cores:
        return best
    return target


def follow_up(
    t: Tidal, ctx: PlanContext, chosen: list[VariantProfile], lam: float, r_fast: float
) -> Plan | None:
    """A move's new replicas are ready but the target it moved to no longer carries the
    fast rate `r_fast`: the replicas in force resized in place (the fast knob, on the
    in-place grid) for `lam` (the observed level: the peak the move outran, not hedged
    again; hedging it held 9 x 1.0 cores where 9 x 0.75 carried the surge), if that saves
    `down_gain` on the interim in force and is not at risk; else None (the interim stays).
    The follow-up change the move had planned anyway, sized on today's rates instead of
    the stale target (measured on days 1-13: a 13.5-core interim kept for 120 s)."""
    cur = ctx.current
    reps = [current_stage(ctx, s.stage) for s in ctx.stages]
    if cur is None or any(r is None for r in reps):
        return None
    n = [r.replicas for r in reps if r is not None]
    p = t.solve(ctx, chosen, lam, replicas=n, wait_rate=r_fast, fine=True)
    if (
        p is None
        or not fits(p, ctx.capacity)
        or p.total_cores >= (1.0 - t.down_gain) * cur.total_cores - 1e-9
        or t.at_risk(ctx, p, chosen, r_fast)
    ):
        return None
    return p


__all__ = ["follow_up", "idle", "one_step"]
