"""`tidal`: Tidal's own planner: each knob by how fast it takes effect and what it costs.

Knobs, fastest first:
- batch: at once (the next batch);
- cores per replica: in place, within a second (no cold start);
- replicas: over the cold start (the variants' `load_time_s`); variants stay fixed per stage
  (`variant`, as Themis: switching variants is not implemented here).

Each decision (every second):
1. Rates. `r_fast` is the mean observed rate of the last `fast_window_s` seconds (3 s: one
   second's count is Poisson noise of sd sqrt(rate)). The observed level is the highest
   `fast_window_s` mean of the last `slow_window_s` seconds. Replicas are sized for the level
   times its *hedge*: the `coverage` (95%) quantile of (realized peak over the next cold-start
   horizon) / (level), measured on the last `hedge_window_s` of this trace's own arrivals
   (`tidal.planners.headroom`), shrunk towards `prior_hedge` (1.25 = the project's default
   0.8 utilisation) as if the prior were 20 samples. Light, smooth load measures a hedge of a
   few percent; bursty load a larger one; before any history, the prior. The forecast
   replaces the level only while, on the decisions scored so far, the forecast hedged to the
   same coverage asks for fewer req/s than the hedged level (`forecast="auto"`; "never" /
   "always" force it): a forecast is used only where it beats the observed rate, at equal
   coverage.
2. The target plan: the joint problem over replicas x cores x batch of all stages (the DP of
   `tidal.planners.dp`), minimizing total cores, where every stage's latency is its batch p99
   + the time to fill the batch + the `wait_quantile` (99%) queueing wait behind earlier
   batches (Erlang C with the Allen-Cunneen M/D/n correction, `headroom.wait_ms`) at the
   observed level, plus (`absorb_peaks`) the delay of a hedged `fast_window_s` peak above the
   plan's capacity C: its backlog (peak - C) x 3 s drains at C, so it costs 1000 x 3 x
   (peak/C - 1) ms; the sum must fit the SLO. The headroom is the queueing delay against the
   actual slack, not a constant; `utilization` (0.95) only caps it where the model is flat.
3. SLO at risk (checked every second, acted on at once): at `r_fast`, the plan in force's
   processing + queueing wait misses the SLO, or a queued request would miss its own deadline
   (per-request slack, Sponge's check: the entry stage's EDF queue served in batches
   back-to-back must finish within `budget_margin` x each remaining budget after the other
   stages' latency). Then: grow cores in place at once keeping the replicas (the fastest
   knob), sized for ``r_fast`` x hedge, on the finer `in_place_step` grid (0.25 core: one
   0.5-core step doubles a small replica), and in the same change start the cheaper target's
   replicas (the bridged cores, on the coarse grid, shrink once they are ready; if that
   target no longer carries the fast rate by then, the replicas in force are resized in
   place for the observed level instead, `tidal_down.follow_up`); if the node has no room in place,
   the target, or more replicas of today's size. Still at risk within a cold start of the
   last urgent change, the next one carries `escalate` (2) x more (a surge outruns the 3-s
   rate: one change per second behind it was measured); an escalated rate no plan carries
   gets the most the nodes carry (not the smaller level target). While a move's new
   replicas start, the rate outgrowing both the plan in force and the one moved to is acted
   on at once (not after the cold start). The first decisions, before a peak was
   measured, carry the whole hedged rate.
4. Arrivals stopped (zero seconds that Poisson arrivals at the rate before them would
   give with probability < `idle_p`): no growth, and at once (within the budget) the
   cheapest plan for the rate the zeros still allow, keeping the replicas that carry the
   hedged level grown in place, if the queued requests keep their deadlines on it.
5. Otherwise hysteresis: a change that is not urgent waits `hold_s` after the previous one, a
   cheaper target must stay cheaper by `down_gain` for `scale_down_after_s` (`hold_s` after
   a bridge), and needs change budget: `max_changes_per_hour` pro rata since the first
   decision over a first hour (a 5-minute run: 5; urgent changes count too), then per hour.
   A scale-down that needs two changes (replicas one way, cores the other) is made as one
   (today's replicas resized in place on the `in_place_step` grid, or today's cores) when
   that is within `down_gain` of it. Growth towards
   the target is non-urgent and goes straight to the target. No move dips: added replicas
   keep the larger cores until ready, removed replicas wait for the larger cores, and a move
   whose running replicas would carry less than today's rate meanwhile is not made while
   the plan in force carries it (`tidal.planners.tidal_moves`, `tidal.planners.tidal_down`).
6. The node constraint is joint: a plan whose replicas (all stages together) cannot be placed
   on the nodes (first-fit decreasing) is never chosen; if even the cheapest cannot, the plan
   that carries the most the nodes can (overload). Cores stay inside the profile's measured
   range (`VariantProfile.core_bounds`).

Pure and deterministic: all memory (change times, forecast scores, the pending target) is in
`TidalState`, passed in and out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal, overload

import numpy as np
from pydantic import Field

from tidal.core.plan import Plan
from tidal.core.profile import VariantProfile
from tidal.planners import tidal_down as down
from tidal.planners import tidal_moves as moves
from tidal.planners.base import (
    RESIZE_IN_PLACE,
    PlanContext,
    PlannerOptions,
    VariantChoice,
    register,
)
from tidal.planners.common import (
    check_context,
    current_stage,
    fits,
    pick_variants,
    queue_ms,
    stage_plan,
)
from tidal.planners.dp import Option, min_cost
from tidal.planners.headroom import (
    hedge,
    measured_history,
    observed_level,
    peak_ratios,
    poisson_prior,
    queue_options,
    sliding_means,
    wait_ms,
)
from tidal.planners.themis import Themis
from tidal.planners.tidal_state import TidalState


class TidalOptions(PlannerOptions):
    """Options of `tidal` (project defaults, chosen on days 14-17 of the Twitter trace only)."""

    utilization: float = Field(
        0.95, gt=0, le=1, description="Highest planned utilisation at the hedged rate."
    )
    coverage: float = Field(
        0.95, gt=0.5, lt=1, description="Quantile of the measured peak/prediction ratio covered."
    )
    wait_quantile: float = Field(
        0.99, gt=0.5, lt=1, description="Quantile of the queueing wait kept within the slack."
    )
    hedge_window_s: int = Field(
        600, ge=60, le=7200, description="History whose peak/level ratios set the hedge (s)."
    )
    prior_hedge: float = Field(
        1.25, ge=1, le=4, description="Hedge before measurements (1/0.8: the default headroom)."
    )
    fast_window_s: int = Field(3, ge=1, le=60, description="Window of the fast rate (s).")
    slow_window_s: int = Field(
        30, ge=1, le=1200, description="Observed level: highest fast mean of this window (s)."
    )
    hold_s: float = Field(60.0, ge=0, le=3600, description="Least time between non-urgent changes.")
    scale_down_after_s: float = Field(
        60.0, ge=0, le=3600, description="A cheaper target must hold this long (s)."
    )
    down_gain: float = Field(
        0.05, ge=0, lt=1, description="Least relative saving worth a scale-down."
    )
    in_place_step: float = Field(
        0.25, ge=0, le=8, description="Core step of an in-place resize alone (0: core_step)."
    )
    max_changes_per_hour: int = Field(
        60, ge=1, le=3600, description="No non-urgent change beyond this many per hour."
    )
    change_credit: int = Field(
        0, ge=0, le=60, description="Changes allowed beyond the pro-rata budget of a first hour."
    )
    escalate: float = Field(
        2.0, ge=1, le=8, description="An urgent change soon after another carries this x more."
    )
    budget_margin: float = Field(
        0.9, gt=0, le=1, description="Per-request slack: fraction of each budget (Sponge 0.9)."
    )
    forecast: Literal["auto", "never", "always"] = Field(
        "auto", description="Use the forecast: when it beats the observed rate, never, always."
    )
    absorb_peaks: bool = Field(
        True, description="Price a hedged peak above capacity as its backlog's delay."
    )
    core_step: float = Field(0.5, gt=0, le=8, description="Grid step of cores per replica.")
    idle_p: float = Field(
        1e-3, ge=0, lt=0.5, description="Arrivals stopped: zero seconds this unlikely (0: off)."
    )
    variant: VariantChoice = Field(None, description="Fixed variant per stage.")


@dataclass(frozen=True)
class Rates:
    """One decision's rates: the fast mean, the hedged rate replicas are sized for, and the
    observed level's hedge (peak/level quantile) that also sizes an urgent growth."""

    fast: float
    slow: float
    hedge: float
    level: float
    forecast_used: bool


@register("tidal")
class Tidal:
    """Fast knobs for surges, slow knobs for the level, hysteresis, joint node constraint."""

    name = "tidal"
    interval_s = 1.0
    resize_mode = RESIZE_IN_PLACE
    Options = TidalOptions

    def __init__(
        self,
        utilization: float = 0.95,
        coverage: float = 0.95,
        wait_quantile: float = 0.99,
        hedge_window_s: int = 600,
        prior_hedge: float = 1.25,
        fast_window_s: int = 3,
        slow_window_s: int = 30,
        hold_s: float = 60.0,
        scale_down_after_s: float = 60.0,
        down_gain: float = 0.05,
        in_place_step: float = 0.25,
        max_changes_per_hour: int = 60,
        change_credit: int = 0,
        escalate: float = 2.0,
        budget_margin: float = 0.9,
        forecast: str = "auto",
        absorb_peaks: bool = True,
        core_step: float = 0.5,
        idle_p: float = 1e-3,
        variant: VariantChoice = None,
    ) -> None:
        self.utilization, self.coverage = utilization, coverage
        self.wait_quantile, self.hedge_window_s = wait_quantile, hedge_window_s
        self.prior_hedge = prior_hedge
        self.fast_window_s, self.slow_window_s = fast_window_s, slow_window_s
        self.hold_s, self.scale_down_after_s = hold_s, scale_down_after_s
        self.down_gain, self.max_changes = down_gain, max_changes_per_hour
        self.change_credit, self.escalate = change_credit, escalate
        self.budget_margin, self.forecast = budget_margin, forecast
        self.absorb_peaks, self.idle_p = absorb_peaks, idle_p
        self.variant = variant
        # the core grids and the Amdahl cap are Themis'; `_full` (utilisation 1, no wait
        # term) finds the most the nodes carry under overload
        self._dp = Themis(core_step=core_step, utilization=utilization, variant=variant)
        self._full = Themis(core_step=core_step, utilization=1.0, variant=variant)
        step = in_place_step if in_place_step > 0 else core_step
        self._fine = Themis(core_step=step, utilization=utilization, variant=variant)

    # ---- rates -------------------------------------------------------------------------
    def horizon_s(self, chosen: list[VariantProfile]) -> int:
        """How far ahead replica decisions must look: the slowest cold start (>= 10 s)."""
        return int(math.ceil(max(10.0, max(v.load_time_s for v in chosen))))

    def grids(self, ctx: PlanContext, chosen: list[VariantProfile]) -> list[list[float]]:
        """The cores per replica each stage may use (Themis' grids, Amdahl-capped)."""
        return self._dp.grids(ctx, chosen)

    def rates(self, ctx: PlanContext, st: TidalState, horizon: int) -> tuple[Rates, TidalState]:
        """This decision's `Rates` and the state with the forecast scores updated.

        The observed level is the highest `fast_window_s` mean of the last `slow_window_s`;
        its hedge is the `coverage` quantile of (realized peak over the next `horizon`) /
        (level), measured on the last `hedge_window_s` of the rate history. The forecast
        replaces the level only when, on the scored decisions, hedging it to the same coverage
        costs less than hedging the level (`forecast="auto"`)."""
        k, w = self.fast_window_s, self.slow_window_s
        hist = measured_history(ctx.rate_history[-(self.hedge_window_s + w) :])
        r_fast = ctx.observed_mean(k)
        level = max(observed_level(hist, k, w), r_fast)
        prior = max(self.prior_hedge, poisson_prior(level, k))
        ratios = peak_ratios(hist, k, w, horizon)
        h_obs = max(1.0, hedge(ratios, self.coverage, prior))
        st = self.score(ctx, st, hist, level, horizon)
        slow, used = level * h_obs, False
        fc = ctx.forecast
        if fc is not None and self.forecast != "never":
            h_fc = self.forecast_hedge(st)
            if self.forecast == "always" or self.forecast_cheaper(st):
                slow, used = fc * (h_fc if h_fc is not None else 1.0), True
        slow = max(slow, r_fast)
        # no peak measured yet (a first decision): no evidence that a peak above the level
        # passes within a few seconds, so the plan carries the whole hedged rate
        return Rates(r_fast, slow, h_obs, level if len(ratios) else slow, used), st

    def forecast_hedge(self, st: TidalState) -> float | None:
        """The forecast's hedge (its peak/forecast quantile), None until 20 are scored."""
        sc = st.scored
        ratios = [pk / f for f, _, pk in sc if f > 0]
        return hedge(ratios, self.coverage, math.nan) if len(ratios) >= 20 else None

    def forecast_cheaper(self, st: TidalState) -> bool:
        """On the scored decisions, the forecast hedged to `coverage` asks for fewer req/s on
        average than the observed level hedged to the same coverage."""
        sc = st.scored
        h_fc = self.forecast_hedge(st)
        if h_fc is None:
            return False
        obs = [o for _, o, _ in sc]
        h_o = hedge([pk / o for _, o, pk in sc if o > 0], self.coverage, math.nan)
        return h_fc * float(np.mean([f for f, _, _ in sc])) < h_o * float(np.mean(obs))

    def score(
        self, ctx: PlanContext, st: TidalState, hist: np.ndarray, level: float, horizon: int
    ) -> TidalState:
        """Score logged (forecast, level) pairs whose horizon has passed against the realized
        peak of the fast-window means; log this decision's pair."""
        keep, scored = [], list(st.scored)
        k = self.fast_window_s
        for t, fc, ob in st.log:
            age = ctx.now - t
            if age < horizon:
                keep.append((t, fc, ob))
                continue
            lo = len(hist) - int(round(age))
            seg = hist[max(0, lo) : max(0, lo) + horizon]
            if len(seg) < k:
                continue
            scored.append((fc, ob, float(sliding_means(seg, k).max())))
        if ctx.forecast is not None:
            keep.append((ctx.now, float(ctx.forecast), level))
        return replace(st, log=tuple(keep[-600:]), scored=tuple(scored[-self.hedge_window_s :]))

    # ---- the queueing model ----------------------------------------------------------------
    def options(
        self,
        ctx: PlanContext,
        chosen: list[VariantProfile],
        lam: float,
        replicas: list[int] | None = None,
        cores: list[float] | None = None,
        wait_rate: float | None = None,
        fine: bool = False,
    ) -> list[list[Option]]:
        """Per stage, every (n, c, b) that carries `lam` (the hedged peak) below
        `utilization`, with its latency at `wait_rate` (the level the queue sees most of the
        time; default `lam`): p99 of a batch + the time to fill it + the `wait_quantile` wait
        behind earlier batches (`tidal.planners.headroom.wait_ms`). `replicas` fixes n,
        `cores` c. Cores stay inside the profile's measured range (`core_bounds`)."""
        mu = lam if wait_rate is None else min(wait_rate, lam)
        peak_s = float(self.fast_window_s) if self.absorb_peaks and mu < lam else 0.0
        return [
            queue_options(
                v,
                grid,
                ctx.capacity,
                lam,
                mu,
                self.utilization,
                self.wait_quantile,
                peak_s,
                None if replicas is None else replicas[i],
                None if cores is None else cores[i],
            )  # fmt: skip
            for i, (v, grid) in enumerate(
                zip(chosen, (self._fine if fine else self._dp).grids(ctx, chosen), strict=True)
            )
        ]

    def solve(
        self,
        ctx: PlanContext,
        chosen: list[VariantProfile],
        lam: float,
        replicas: list[int] | None = None,
        cores: list[float] | None = None,
        wait_rate: float | None = None,
        fine: bool = False,
    ) -> Plan | None:
        """The cheapest plan for `lam` within the SLO under the queueing model (the DP);
        `fine`: on the in-place grid (`in_place_step`)."""
        opts = self.options(ctx, chosen, lam, replicas, cores, wait_rate, fine)
        picked = min_cost(opts, ctx.slo_ms, ctx.slo_ms / 2000)
        if picked is None:
            return None
        return Plan(
            stages=tuple(
                stage_plan(st.stage, v.name, *o.payload)
                for st, v, o in zip(ctx.stages, chosen, picked, strict=True)
            )
        )

    def latency_ms(self, plan: Plan, chosen: list[VariantProfile], lam: float) -> list[float]:
        """Per stage: the planned latency of `plan` at `lam` (inf if it cannot carry it)."""
        out = []
        for sp, v in zip(plan.stages, chosen, strict=True):
            wait = wait_ms(
                np.asarray([sp.replicas]),
                np.asarray([sp.batch]),
                np.asarray([v.latency_ms(sp.batch, sp.cores)]),
                lam,
                self.wait_quantile,
                v.fit.p99_ratio,
            )
            out.append(v.p99_ms(sp.batch, sp.cores) + float(wait[0]))
        return out

    # ---- checks --------------------------------------------------------------------------
    def at_risk(self, ctx: PlanContext, plan: Plan, chosen: list[VariantProfile], r: float) -> bool:
        """At `r`, the plan's queueing wait plus processing misses the SLO (or it cannot
        carry `r` at all), or a queued request would miss its own deadline."""
        for st, v in zip(ctx.stages, chosen, strict=True):
            sp = next((s for s in plan.stages if s.stage == st.stage), None)
            if sp is None or sp.variants[0].name != v.name:
                return True
        # processing + wait only: the batcher dispatches partial batches, so the time to
        # fill a batch at a lower rate is not a risk (counting it flapped the plan)
        lats = self.latency_ms(plan, chosen, r)
        if sum(lats) > ctx.slo_ms + 1e-9:
            return True
        if ctx.budgets_ms:
            sp0, v0 = plan.stages[0], chosen[0]
            rest = sum(lats[1:])
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
        rates, st = self.rates(ctx, st, self.horizon_s(chosen))
        st = replace(
            st,
            changes=tuple(t for t in st.changes if ctx.now - t < 3600.0),
            start=ctx.now if st.start is None else st.start,
        )
        plan, st = self._decide(ctx, st, chosen, rates)
        if ctx.current is not None and plan.stages != ctx.current.stages:
            st = replace(st, changes=(*st.changes, ctx.now))  # the first plan is no change
        return plan, st

    def budget_left(self, ctx: PlanContext, st: TidalState) -> bool:
        """One more change stays within the change budget (`within_budget`)."""
        start = ctx.now if st.start is None else st.start
        return moves.within_budget(st.changes, start, ctx.now, self.max_changes, self.change_credit)

    def _target(
        self, ctx: PlanContext, chosen: list[VariantProfile], lam: float, wait_rate: float
    ) -> Plan | None:
        """The cheapest plan for `lam` (latency at `wait_rate`) that fits the nodes jointly."""
        p = self.solve(ctx, chosen, lam, wait_rate=wait_rate)
        return p if p is not None and fits(p, ctx.capacity) else None

    def _decide(
        self, ctx: PlanContext, st: TidalState, chosen: list[VariantProfile], rates: Rates
    ) -> tuple[Plan, TidalState]:
        r_fast, lam = rates.fast, rates.slow
        target = self._target(ctx, chosen, lam, rates.level)
        cur = ctx.current
        if cur is None:
            if target is None:
                return moves.overload_plan(self._full, self._dp, ctx, chosen, lam), st
            return target, replace(st, cheaper_since=None, target=None)
        # a transition in progress: shrink cores once the new replicas are ready
        if st.target is not None:
            starting = bool(ctx.pending.resizing_stages) or any(
                ctx.pending.starting_replicas.get(s.stage, 0) > 0 for s in ctx.stages
            )
            target_ok = not self.at_risk(ctx, st.target, chosen, r_fast)
            if not starting and target_ok:
                return st.target, replace(st, target=None)
            if starting and (target_ok or not self.at_risk(ctx, cur, chosen, r_fast)):
                return cur, st
            if not starting:
                lam_f = max(rates.level, r_fast)
                follow = down.follow_up(self, ctx, chosen, lam_f, r_fast)
                if follow is not None:
                    return follow, replace(st, target=None)
            # the rate outgrew both the plan in force and the one being moved to: drop it,
            # act on the risk now (the replicas already starting keep starting) rather than
            # after their cold start
            st = replace(st, target=None)
        idle = down.idle(self, ctx, st, chosen, lam)
        if idle is not None:  # before the risk check: the fast rate predates the stop
            return idle
        st = replace(st, idle=False)
        if self.at_risk(ctx, cur, chosen, r_fast):  # urgent: fastest knob first, hedged
            lam_u = max(lam, r_fast * rates.hedge)
            horizon = self.horizon_s(chosen)
            if st.urgent_at is not None and ctx.now - st.urgent_at < horizon:
                # still at risk within a cold start of the last urgent change: the surge
                # outruns the fast rate, so escalate (each step carries `escalate` x more)
                # instead of one change per second behind it
                lam_u = max(lam_u, self.escalate * moves.max_rps(cur, chosen))
            grown, st2 = self._grow(
                ctx, st, chosen, lam_u, self._target(ctx, chosen, lam_u, r_fast), r_fast
            )
            # an urgent change must add capacity (>= 5%); else re-solving each second for a
            # noisy rate flaps the plan without helping (measured: 800 changes/hour)
            if moves.max_rps(grown, chosen) >= 1.05 * moves.max_rps(cur, chosen) or not fits(
                cur, ctx.capacity
            ):
                return grown, replace(st2, urgent_at=ctx.now)
            return cur, st
        if target is None:
            return cur, st
        quiet = not st.changes or ctx.now - st.changes[-1] >= self.hold_s - 1e-9
        budget_left = self.budget_left(ctx, st)
        if target.total_cores > cur.total_cores + 1e-9:  # the level rose: grow, not urgent
            carried = self._carries(cur, chosen, lam, rates.level, ctx.slo_ms)
            if quiet and budget_left and not carried:
                # not urgent: there is time for a cold start, so no in-place bridge
                st = replace(st, cheaper_since=None, bridged=False)
                return self._replicas_first(ctx, st, chosen, lam, target, r_fast)
            return cur, st
        if target.total_cores < (1.0 - self.down_gain) * cur.total_cores - 1e-9:
            since = ctx.now if st.cheaper_since is None else st.cheaper_since
            st = replace(st, cheaper_since=since)
            wait = self.hold_s if st.bridged else self.scale_down_after_s
            if ctx.now - since >= wait - 1e-9 and quiet and budget_left:
                target = down.one_step(self, ctx, chosen, lam, rates.level, target)
                moved = self._move(
                    ctx, replace(st, cheaper_since=None, bridged=False), target, r_fast
                )
                return moved if moved is not None else (cur, st)
            return cur, st
        return cur, replace(st, cheaper_since=None)

    def _carries(
        self, plan: Plan, chosen: list[VariantProfile], lam: float, level: float, slo: float
    ) -> bool:
        """The plan in force already carries `lam` within the SLO at `level`, as the target
        is sized (`options`): a more expensive target is then no reason to change."""
        mu = min(level, lam)
        total = 0.0
        for sp, v, lat in zip(plan.stages, chosen, self.latency_ms(plan, chosen, mu), strict=True):
            carry = sp.replicas * v.throughput(sp.batch, sp.cores) * self.utilization
            if carry < (mu if self.absorb_peaks else lam) - 1e-9:
                return False
            total += lat + queue_ms(sp.batch, mu)
            if self.absorb_peaks:
                total += 1000.0 * self.fast_window_s * max(0.0, lam / carry - 1.0)
        return total <= slo + 1e-9

    def _grow(
        self,
        ctx: PlanContext,
        st: TidalState,
        chosen: list[VariantProfile],
        lam: float,
        target: Plan | None,
        r_now: float,
    ) -> tuple[Plan, TidalState]:
        """Cores in place with the replicas in force, else the target (replicas first), else
        (the target's consolidation would dip below `r_now`) more replicas of today's size."""
        assert ctx.current is not None
        reps = [current_stage(ctx, s.stage) for s in ctx.stages]
        st = replace(st, cheaper_since=None)
        if all(r is not None for r in reps):
            n = [r.replicas for r in reps if r is not None]
            vert = self.solve(ctx, chosen, lam, n, wait_rate=r_now)
            if vert is not None and fits(vert, ctx.capacity):
                adds = target is not None and any(
                    sp.replicas > (c.replicas if (c := current_stage(ctx, sp.stage)) else 0)
                    for sp in target.stages
                )
                if target is not None and adds and target.total_cores < vert.total_cores - 1e-9:
                    # bridge in place and start the cheaper plan's replicas at once: the
                    # bridged cores are kept only until they are ready
                    plan, st2 = self._move(replace(ctx, current=vert), st, target)
                    if st2.target is not None:
                        return plan, st2
                # in place alone: on the finer in-place grid (a bridge keeps the coarse
                # step: its replicas carry the surge until the new ones start)
                fine = self.solve(ctx, chosen, lam, n, wait_rate=r_now, fine=True)
                if fine is not None and fits(fine, ctx.capacity):
                    vert = fine if fine.total_cores < vert.total_cores else vert
                # the cheaper replica plan follows after `hold_s` (not a scale-down)
                return vert, replace(st, bridged=True)
        if target is None:
            return moves.overload_plan(self._full, self._dp, ctx, chosen, lam), st
        return self._replicas_first(ctx, st, chosen, lam, target, r_now)

    def _replicas_first(
        self,
        ctx: PlanContext,
        st: TidalState,
        chosen: list[VariantProfile],
        lam: float,
        target: Plan,
        r_now: float,
    ) -> tuple[Plan, TidalState]:
        """Move to `target`; if its consolidation would dip below `r_now`, add replicas of
        today's cores instead (they carry the load once started); the dip only if neither."""
        moved = self._move(ctx, st, target, r_now)
        if moved is not None:
            return moved
        reps = [current_stage(ctx, s.stage) for s in ctx.stages]
        if all(r is not None for r in reps):
            horiz = self.solve(
                ctx, chosen, lam, cores=[r.cores for r in reps if r is not None], wait_rate=r_now
            )
            if horiz is not None and fits(horiz, ctx.capacity):
                return horiz, replace(st, target=None)
        cur = ctx.current
        if cur is not None and (
            not self.at_risk(ctx, cur, chosen, r_now) or moves.max_rps(cur, chosen) >= r_now
        ):
            return cur, st  # the plan in force carries today's rate: better than a dip
        return self._move(ctx, st, target)  # the dip is the lesser evil

    @overload
    def _move(self, ctx: PlanContext, st: TidalState, target: Plan) -> tuple[Plan, TidalState]: ...

    @overload
    def _move(
        self, ctx: PlanContext, st: TidalState, target: Plan, r_now: float
    ) -> tuple[Plan, TidalState] | None: ...

    def _move(
        self, ctx: PlanContext, st: TidalState, target: Plan, r_now: float | None = None
    ) -> tuple[Plan, TidalState] | None:
        """`interim_move`, with the target remembered while an interim is in force."""
        plan = moves.interim_move(ctx, target, r_now)
        if plan is None:
            return None
        return plan, replace(st, target=None if plan is target else target)


__all__ = ["Tidal", "TidalOptions", "TidalState"]
