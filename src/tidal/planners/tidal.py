"""`tidal`: Tidal's own planner: each knob by how fast it takes effect and what it costs.

Knobs, fastest first:
- batch: at once (the next batch);
- cores per replica: in place, within a second (no cold start);
- replicas: over the cold start (the variants' `load_time_s`); variants stay fixed per stage
  (`variant`, as Themis: switching variants is not implemented here).

Each decision (every second):
1. Rates. `r_fast` is the mean observed rate of the last `fast_window_s` seconds (3 s: one
   second's count is Poisson noise of sd sqrt(rate)). `r_slow`, the rate replicas are sized
   for over the cold-start horizon, is the highest `fast_window_s`-mean of the last
   `slow_window_s` seconds; it becomes max(r_slow, forecast) only while the forecast has
   beaten the observed rate on this trace: every decision logs (forecast, observed level), and
   once the horizon has passed the realized peak scores both (absolute error, under-prediction
   weighted `under_weight`x since it costs violations); the forecast is used only if its
   running error is lower (`forecast="auto"`; "never" / "always" force it).
2. The target plan: the joint problem over replicas x cores x batch of all stages (Themis'
   optimal DP, `tidal.planners.themis.solve`) for ``r_slow / utilization`` with the latency of
   every stage's p99 plus the batch-filling delay, within the SLO.
3. SLO at risk (checked every second, acted on at once): the plan in force cannot carry
   ``r_fast`` at `risk_utilization`, or its latency misses the SLO, or a queued request would
   miss its own deadline (per-request slack, Sponge's check: the entry stage's EDF queue served
   in batches back-to-back must finish within `budget_margin` x each remaining budget after the
   other stages' latency). Then: grow cores in place at once keeping the replicas (the fastest
   knob), sized for the target rate; if cores alone cannot, start replicas (keeping the larger
   cores until they are ready, as Themis).
4. Otherwise hysteresis: a change that is not urgent waits `hold_s` after the previous change,
   a cheaper target must stay cheaper by `down_gain` for `scale_down_after_s`, and no
   non-urgent change is made once `max_changes_per_hour` changes happened in the last hour.
   Growth towards the target (r_slow rose) is non-urgent.
5. The node constraint is joint: a plan whose replicas (all stages together) cannot be placed
   on the nodes (first-fit decreasing) is never chosen; if even the cheapest cannot, the plan
   in force is kept and flagged infeasible.

Pure and deterministic: all memory (change times, forecast scores, the pending target) is in
`TidalState`, passed in and out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from pydantic import Field

from tidal.core.plan import Plan, StagePlan
from tidal.core.profile import VariantProfile
from tidal.planners.base import (
    RESIZE_IN_PLACE,
    PlanContext,
    PlannerOptions,
    VariantChoice,
    register,
)
from tidal.planners.common import check_context, current_stage, fits, pick_variants
from tidal.planners.themis import Themis


class TidalOptions(PlannerOptions):
    """Options of `tidal` (project defaults, chosen on days 14-17 of the Twitter trace only)."""

    utilization: float = Field(
        0.8, gt=0, le=1, description="Target utilisation of the replica plan (headroom)."
    )
    risk_utilization: float = Field(
        0.95, gt=0, le=1, description="SLO at risk above this utilisation at the fast rate."
    )
    fast_window_s: int = Field(3, ge=1, le=60, description="Window of the fast rate (s).")
    slow_window_s: int = Field(
        30, ge=1, le=1200, description="Window whose peak block sizes the replicas (s)."
    )
    slow_block_s: int = Field(
        3, ge=1, le=600, description="Block of the slow window: its highest mean counts."
    )
    urgent_margin: float = Field(
        0.2, ge=0, le=10, description="Extra rate fraction planned for on an urgent growth."
    )
    hold_s: float = Field(60.0, ge=0, le=3600, description="Least time between non-urgent changes.")
    scale_down_after_s: float = Field(
        120.0, ge=0, le=3600, description="A cheaper target must hold this long (s)."
    )
    down_gain: float = Field(
        0.1, ge=0, lt=1, description="Least relative saving worth a scale-down."
    )
    max_changes_per_hour: int = Field(
        60, ge=1, le=3600, description="No non-urgent change beyond this many per hour."
    )
    budget_margin: float = Field(
        0.9, gt=0, le=1, description="Per-request slack: fraction of each budget (Sponge 0.9)."
    )
    forecast: Literal["auto", "never", "always"] = Field(
        "auto", description="Use the forecast: when it beats the observed rate, never, always."
    )
    under_weight: float = Field(
        3.0, ge=1, le=100, description="Forecast scoring: weight of under-prediction."
    )
    core_step: float = Field(0.5, gt=0, le=8, description="Grid step of cores per replica.")
    variant: VariantChoice = Field(None, description="Fixed variant per stage.")


@dataclass(frozen=True)
class TidalState:
    """Change times (last hour), when the target became cheaper, the target being moved to,
    and the forecast-vs-observed scores."""

    changes: tuple[float, ...] = ()
    cheaper_since: float | None = None
    target: Plan | None = None
    log: tuple[tuple[float, float, float], ...] = ()  # (t, forecast, observed level)
    err_forecast: float = 0.0
    err_observed: float = 0.0
    scored: int = 0


@register("tidal")
class Tidal:
    """Fast knobs for surges, slow knobs for the level, hysteresis, joint node constraint."""

    name = "tidal"
    interval_s = 1.0
    resize_mode = RESIZE_IN_PLACE
    Options = TidalOptions

    def __init__(
        self,
        utilization: float = 0.8,
        risk_utilization: float = 0.95,
        fast_window_s: int = 3,
        slow_window_s: int = 30,
        slow_block_s: int = 3,
        urgent_margin: float = 0.2,
        hold_s: float = 60.0,
        scale_down_after_s: float = 120.0,
        down_gain: float = 0.1,
        max_changes_per_hour: int = 60,
        budget_margin: float = 0.9,
        forecast: str = "auto",
        under_weight: float = 3.0,
        core_step: float = 0.5,
        variant: VariantChoice = None,
    ) -> None:
        self.utilization, self.risk_utilization = utilization, risk_utilization
        self.fast_window_s, self.slow_window_s = fast_window_s, slow_window_s
        self.slow_block_s, self.urgent_margin = slow_block_s, urgent_margin
        self.hold_s, self.scale_down_after_s = hold_s, scale_down_after_s
        self.down_gain, self.max_changes = down_gain, max_changes_per_hour
        self.budget_margin, self.forecast, self.under_weight = budget_margin, forecast, under_weight
        self.variant = variant
        # the joint DP and the Amdahl cap are Themis' (at this planner's utilisation)
        self._dp = Themis(core_step=core_step, utilization=utilization, variant=variant)
        self._full = Themis(core_step=core_step, utilization=1.0, variant=variant)

    # ---- rates -------------------------------------------------------------------------
    def horizon_s(self, chosen: list[VariantProfile]) -> float:
        """How far ahead replica decisions must look: the slowest cold start (>= 10 s)."""
        return max(10.0, max(v.load_time_s for v in chosen))

    def rates(
        self, ctx: PlanContext, st: TidalState, horizon: float
    ) -> tuple[float, float, TidalState]:
        """(r_fast, r_slow) and the state with the forecast scores updated."""
        hist = np.asarray(ctx.rate_history, dtype=np.float64)
        r_fast = ctx.observed_mean(self.fast_window_s)
        r_obs = r_fast
        if len(hist):
            tail = hist[-self.slow_window_s :]
            k = max(1, min(self.slow_block_s, len(tail)))
            blocks = [float(b.mean()) for b in np.array_split(tail, max(1, len(tail) // k))]
            r_obs = max(blocks)
        st = self.score(ctx, st, hist, r_obs, horizon)
        r_slow = r_obs
        fc = ctx.forecast
        use = self.forecast == "always" or (
            self.forecast == "auto" and st.scored >= 5 and st.err_forecast < st.err_observed
        )
        if fc is not None and use:
            r_slow = max(r_obs, fc)
        return r_fast, r_slow, st

    def score(
        self, ctx: PlanContext, st: TidalState, hist: np.ndarray, r_obs: float, horizon: float
    ) -> TidalState:
        """Score logged (forecast, observed) pairs whose horizon has passed against the
        realized peak of the fast-window means; log this decision's pair."""
        log, ef, eo, n = list(st.log), st.err_forecast, st.err_observed, st.scored
        keep = []
        k = self.fast_window_s
        for t, fc, ob in log:
            age = ctx.now - t
            if age < horizon:
                keep.append((t, fc, ob))
                continue
            lo = len(hist) - int(round(age))
            seg = hist[max(0, lo) : max(0, lo) + int(round(horizon))]
            if len(seg) < k:
                continue
            peak = float(np.convolve(seg, np.ones(k) / k, mode="valid").max())
            ef = 0.9 * ef + 0.1 * self.loss(fc, peak)
            eo = 0.9 * eo + 0.1 * self.loss(ob, peak)
            n += 1
        if ctx.forecast is not None:
            keep.append((ctx.now, float(ctx.forecast), r_obs))
        return replace(st, log=tuple(keep[-600:]), err_forecast=ef, err_observed=eo, scored=n)

    def loss(self, predicted: float, actual: float) -> float:
        err = actual - predicted
        return err * self.under_weight if err > 0 else -err

    # ---- checks --------------------------------------------------------------------------
    def at_risk(self, ctx: PlanContext, plan: Plan, chosen: list[VariantProfile], r: float) -> bool:
        """The plan cannot carry `r` at `risk_utilization`, misses the SLO, or a queued
        request would miss its own deadline."""
        lat = 0.0
        lats = []
        for st, v in zip(ctx.stages, chosen, strict=True):
            sp = next((s for s in plan.stages if s.stage == st.stage), None)
            if sp is None or sp.variants[0].name != v.name:
                return True
            if sp.replicas * v.throughput(sp.batch, sp.cores) * self.risk_utilization < r:
                return True
            # processing latency only: the batcher dispatches partial batches, so the time to
            # fill a batch at a lower rate is not a risk (counting it flapped the plan)
            lats.append(v.p99_ms(sp.batch, sp.cores))
            lat += lats[-1]
        if lat > ctx.slo_ms + 1e-9:
            return True
        if ctx.budgets_ms:
            sp0, v0 = plan.stages[0], chosen[0]
            rest = lat - lats[0]
            per = max(1, sp0.replicas * sp0.batch)
            q = np.arange(len(ctx.budgets_ms))
            finish = (q // per + 1) * v0.p99_ms(sp0.batch, sp0.cores) + rest
            budgets = np.sort(np.asarray(ctx.budgets_ms, dtype=np.float64))
            if bool(np.any(finish > self.budget_margin * budgets + 1e-9)):
                return True
        return False

    # ---- decision ------------------------------------------------------------------------
    def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
        check_context(ctx)
        st = ctx.state if isinstance(ctx.state, TidalState) else TidalState()
        chosen = pick_variants(ctx, self.variant)
        r_fast, r_slow, st = self.rates(ctx, st, self.horizon_s(chosen))
        st = replace(st, changes=tuple(t for t in st.changes if ctx.now - t < 3600.0))
        plan, st = self._decide(ctx, st, chosen, r_fast, r_slow)
        if ctx.current is None or plan.stages != ctx.current.stages:
            st = replace(st, changes=(*st.changes, ctx.now))
        return plan, st

    def _target(self, ctx: PlanContext, chosen: list[VariantProfile], lam: float) -> Plan | None:
        """The cheapest plan for `lam` at `utilization` that fits the nodes jointly."""
        p = self._dp.solve(replace(ctx, forecast=lam), chosen)
        return p if p is not None and fits(p, ctx.capacity) else None

    def _decide(
        self,
        ctx: PlanContext,
        st: TidalState,
        chosen: list[VariantProfile],
        r_fast: float,
        r_slow: float,
    ) -> tuple[Plan, TidalState]:
        lam = max(r_fast, r_slow)
        target = self._target(ctx, chosen, lam)
        cur = ctx.current
        if cur is None:
            if target is None:
                return self._infeasible(ctx, chosen, lam), st
            return target, replace(st, cheaper_since=None, target=None)
        # a transition in progress: shrink cores once the new replicas are ready
        if st.target is not None:
            starting = any(ctx.pending.starting_replicas.get(s.stage, 0) > 0 for s in ctx.stages)
            if not starting and not self.at_risk(ctx, st.target, chosen, r_fast):
                return st.target, replace(st, target=None)
            if starting:
                return cur, st
            st = replace(st, target=None)
        if self.at_risk(ctx, cur, chosen, r_fast):  # urgent: fastest knob first, with margin
            lam_u = lam * (1.0 + self.urgent_margin)
            grown, st2 = self._grow(
                ctx, st, chosen, lam_u, self._target(ctx, chosen, lam_u) or target
            )
            # an urgent change must add capacity (>= 5%); else re-solving each second for a
            # noisy rate flaps the plan without helping (measured: 800 changes/hour)
            if _max_rps(grown, chosen) >= 1.05 * _max_rps(cur, chosen) or not fits(
                cur, ctx.capacity
            ):
                return grown, st2
            return cur, st
        if target is None:
            return cur, st
        quiet = not st.changes or ctx.now - st.changes[-1] >= self.hold_s - 1e-9
        budget_left = len(st.changes) < self.max_changes
        if target.total_cores > cur.total_cores + 1e-9:  # the level rose: grow, not urgent
            if quiet and budget_left:
                return self._grow(ctx, st, chosen, lam, target)
            return cur, st
        if target.total_cores < (1.0 - self.down_gain) * cur.total_cores - 1e-9:
            since = ctx.now if st.cheaper_since is None else st.cheaper_since
            st = replace(st, cheaper_since=since)
            if ctx.now - since >= self.scale_down_after_s - 1e-9 and quiet and budget_left:
                return self._move(ctx, replace(st, cheaper_since=None), target)
            return cur, st
        return cur, replace(st, cheaper_since=None)

    def _grow(
        self,
        ctx: PlanContext,
        st: TidalState,
        chosen: list[VariantProfile],
        lam: float,
        target: Plan | None,
    ) -> tuple[Plan, TidalState]:
        """Cores in place with the replicas in force, else the target (replicas first)."""
        assert ctx.current is not None
        reps = [current_stage(ctx, s.stage) for s in ctx.stages]
        st = replace(st, cheaper_since=None)
        if all(r is not None for r in reps):
            vert = self._dp.solve(
                replace(ctx, forecast=lam), chosen, [r.replicas for r in reps if r is not None]
            )
            if vert is not None and fits(vert, ctx.capacity):
                return vert, st  # the cheaper replica plan follows once it has held
        if target is None:
            return self._infeasible(ctx, chosen, lam), st
        return self._move(ctx, st, target)

    def _move(self, ctx: PlanContext, st: TidalState, target: Plan) -> tuple[Plan, TidalState]:
        """Go to `target`; where it adds replicas but shrinks cores, keep the larger cores
        until the new replicas are ready (never a dip in capacity during a cold start)."""
        stages: list[StagePlan] = []
        grow = False
        for sp in target.stages:
            cur = current_stage(ctx, sp.stage)
            if cur is not None and sp.replicas > cur.replicas and cur.cores > sp.cores:
                grow = True
                stages.append(sp.model_copy(update={"cores": cur.cores, "batch": cur.batch}))
            else:
                stages.append(sp)
        interim = Plan(stages=tuple(stages))
        if grow and fits(interim, ctx.capacity):
            return interim, replace(st, target=target)
        return target, replace(st, target=None)

    def _infeasible(self, ctx: PlanContext, chosen: list[VariantProfile], lam: float) -> Plan:
        """Overload: no plan carries `lam` with headroom on the nodes. Serve as much as the
        nodes can: the cheapest plan (at utilisation 1) for the highest rate any plan that
        fits carries within the SLO (bisection), kept while the plan in force carries >= 95%
        of that (no flapping); its reason starts with "overload:". Flagged infeasible only
        when nothing fits at all."""
        reason = (
            f"no plan carries {lam:.4g} req/s within the {ctx.slo_ms:g} ms SLO on "
            f"{ctx.capacity.nodes} x {ctx.capacity.cores_per_node:g} cores"
        )
        lo, hi, best = 0.0, lam, None
        for _ in range(10):
            mid = (lo + hi) / 2
            p = self._full.solve(replace(ctx, forecast=mid), chosen)
            if p is not None and fits(p, ctx.capacity):
                lo, best = mid, p
            else:
                hi = mid
        cur = ctx.current
        near = best is None or (
            cur is not None and _max_rps(cur, chosen) >= 0.95 * _max_rps(best, chosen)
        )
        if cur is not None and near and fits(cur, ctx.capacity):
            best = cur  # already (nearly) the most the nodes carry: no flapping
        if best is None:
            return self._dp.fastest(replace(ctx, forecast=lam), chosen, reason)
        # the most the nodes carry within the SLO: a plan to apply (the controller keeps the
        # last *feasible* plan, so flagging this one would leave a smaller plan in force);
        # the reason says the load exceeds it
        carried = _max_rps(best, chosen)
        return best.model_copy(
            update={"feasible": True, "reason": f"overload: {reason}; carries {carried:.4g}"}
        )


def _max_rps(plan: Plan, chosen: list[VariantProfile]) -> float:
    """The rate a plan carries at full utilisation: its slowest stage's throughput."""
    return min(
        sp.replicas * v.throughput(sp.batch, sp.cores)
        for sp, v in zip(plan.stages, chosen, strict=False)
    )


__all__ = ["Tidal", "TidalOptions", "TidalState"]
