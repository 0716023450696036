"""`themis`: vertical first, then horizontal (Themis, arXiv 2407.14843; reconstructed from the
paper text, the authors' code is not public).

Two stages:
1. Surge (the plan in force cannot carry the *observed* rate of the last second, checked every
   second as the paper's stage 1 does; `surge_rate="forecast"` restores the earlier behaviour
   of testing the forecast, which the simulator refreshes only every 10 s): keep every
   stage's replicas and resize in place at once: the fewest total cores, choosing cores per
   replica and batch, such that ``n_s*h_s(b,c) >= lambda`` and the end-to-end latency meets
   the SLO. If even the largest useful size cannot, go to the joint problem at once (new
   replicas are needed).
2. Stable load (reconstructed test, see `Themis.stable`: over the last `stable_window_s` the
   observed level held, i.e. each of three block means is within `tolerance` of the window
   mean plus twice the Poisson counting noise of a block mean, and the forecast agrees with
   the observation, i.e. lies within `tolerance` of the range from the window's mean to its
   highest second; and the plan has not changed for `stable_window_s`, our hysteresis against
   flapping on noise): solve the joint problem over replicas x
   cores x batch of every stage, minimizing ``sum n_s*c_s`` s.t. ``n_s*h_s(b_s,c_s) >= lambda``
   and ``sum_s (l99_s(b_s,c_s) + (b_s-1)/lambda) <= SLO``, optimally by dynamic programming over
   stages with the latency budget discretized (`tidal.planners.dp`). Then move there: start new
   replicas first (keeping the larger cores meanwhile) and shrink cores only once
   ``ctx.pending.starting_replicas`` says they are ready. Moves only for a strictly cheaper
   plan; this is also how Themis scales back down once a surge is over.
   (Earlier versions required each second of the window to be within 10% of the mean and the
   forecast within 10% of the last second: per-second counts are too noisy and the LSTM
   predicts a 20 s maximum, so stage 2 never ran on a real trace and the surge's cores
   stayed forever.)

Stage 2 sizes for max(forecast, observed rate): the forecast drives it, and the observed rate
keeps the next second's stage 1 from undoing it at once.
Headroom (project default, the paper gives none): replicas and cores are sized so the planned
utilisation is at most `utilization` (0.8), ``n*h(b,c)*utilization >= lambda``; with
``utilization=1`` the planned utilisation reaches 1.0 and Poisson bursts are refused (measured:
93-100% of Themis' violations were refusals at utilisation 1). The surge test is at
utilisation 1: a surge is load the plan in force cannot carry at all.

Amdahl cap: cores per replica stop where the profile's speed-up flattens: the profile's
`max_useful_cores`, else the size beyond which one more `core_step` gains under `min_gain`
(5%) of latency at batch 1; never more than a node.
Grid on small nodes (`node_step`): when a node's cores are not a multiple of `core_step`, the
step shrinks to the largest that divides them (1/3 on 2/3-core nodes), so a replica can fill
its node and the vertical stage can grow it to the node's size; with 0.5 on 2/3-core nodes a
replica could not exceed 0.5 cores and a quarter of every node stayed idle. Nodes that are a
multiple (1.5, 2, 4 ... cores) keep `core_step` unchanged.
Interval (reconstructed, the paper gives none): 1 s, as Sponge's vertical loop, so surges are
absorbed within a second; the horizontal stage runs on the same tick once stable.
Predictor: the paper's LSTM (`tidal.forecast`, IPA setting) fed as `ctx.forecast`.
Variant (`variants="fixed"`, the default): fixed per stage (`variant`; default the first
candidate): Themis does not switch models, and the paper's reproduction (docs/results.md) runs
this way.
Versions chosen by load (`variants="auto"`, Tidal's extension, not in the paper): per stage,
the most accurate version whose capacity carries the load (see `Themis.pick`): a combination
of versions is *capable* at rate r when the joint DP finds a plan for r within the SLO at the
`utilization` headroom that fits the nodes. Every tick: if the versions in force are not
capable at ``max(forecast, observed)``, switch at once to the most accurate capable
combination (a cheaper, faster version as the load rises); a more accurate combination is
taken back only once `variant_hold_s` passed since the last version change and it is capable
at ``(1 + variant_margin)`` x the highest second of the last `variant_hold_s` (and the
forecast): hysteresis in level and in time, so Poisson noise around a boundary does not flap
(each change is a cold start). Accuracy of a combination: the sum of its stages' accuracies
(unknown accuracies are 0: ties keep the versions in force, then the first candidate). A
version change re-plans the stage with the joint DP at once (its replicas are new anyway); the
plan's reason names the change and the rate. At most `MAX_COMBOS` combinations are ranked:
beyond that each stage keeps its most accurate and fastest versions.
Resize: in place. Infeasible: the fastest configuration per stage, flagged.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from tidal.core.capacity import Capacity
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
    BATCHES,
    check_context,
    core_grid,
    current_stage,
    fits,
    max_cores_per_replica,
    pick_variants,
    replicas_needed,
    stage_latency_ms,
    stage_plan,
)
from tidal.planners.dp import Option, min_cost

MAX_COMBOS = 256
"""`variants="auto"`: most version combinations ranked per decision (each costs one DP)."""
RANGE_POINTS = 8
"""Rates checked by `Themis.capable_over` before a switch to a more accurate version."""


def amdahl_cap(
    profile: VariantProfile, capacity: Capacity, step: float = 0.5, min_gain: float = 0.05
) -> float:
    """Largest useful cores per replica (see module docstring)."""
    cap = max_cores_per_replica(profile, capacity)
    if profile.max_useful_cores is not None:
        return cap
    c = step
    while c + step <= cap + 1e-9:
        gain = 1.0 - profile.latency_ms(1, c + step) / profile.latency_ms(1, c)
        if gain < min_gain:
            return c
        c += step
    return max(step, min(c, cap))


def node_step(step: float, node_cores: float) -> float:
    """`step`, or the largest step below it that divides `node_cores` into whole steps (see
    the module docstring)."""
    if node_cores <= 0:
        return step
    k = math.ceil(node_cores / step - 1e-6)
    return step if abs(k * step - node_cores) <= 1e-6 else node_cores / k


def node_grid(cap: float, step: float) -> list[float]:
    """Multiples of `step` up to `cap` (tolerant to `step` not being a decimal: 1/3), never
    above `cap`; at least one point."""
    out = [min(k * step, cap) for k in range(1, int(cap / step + 1e-6) + 1)]
    return out or [cap]


@dataclass(frozen=True)
class ThemisState:
    """Transition bookkeeping: the target being moved to, if any, and when the plan last
    changed (stage 2 waits a full stable window after any change: hysteresis), and when the
    versions last changed."""

    target: Plan | None = None
    changed_at: float | None = None
    variant_at: float | None = None
    """`variants="auto"`: when the versions last changed (the hold of `variant_hold_s`)."""


def stage_options(
    profile: VariantProfile,
    lam: float,
    capacity: Capacity,
    cores: list[float],
    replicas: int | None = None,
    utilization: float = 1.0,
) -> list[Option]:
    """All (n, c, b) of one stage that carry `lam` at `utilization`; `replicas` fixes n
    (vertical stage)."""
    out = []
    per_node = capacity.cores_per_node
    for c in cores:
        slots = capacity.nodes * int(per_node / c + 1e-9)
        for b in BATCHES:
            n = replicas_needed(profile, b, c, lam / utilization)
            if replicas is not None:
                if n > replicas:
                    continue
                n = replicas
            if n > slots:
                continue
            lat = stage_latency_ms(profile, b, c, lam)
            if np.isfinite(lat):
                out.append(Option(lat, n * c, (n, c, b)))
    return out


class ThemisOptions(PlannerOptions):
    """Options of `themis` (defaults: reconstructed from the paper text, or the project's)."""

    core_step: float = Field(0.5, gt=0, le=8, description="Grid step of cores per replica.")
    resolution_ms: float | None = Field(
        None, gt=0, description="DP latency grid (ms); default SLO/2000."
    )
    tolerance: float = Field(
        0.1, ge=0, le=1, description="Stability test: relative band of block means/forecast."
    )
    stable_window_s: int = Field(
        30, ge=3, le=3600, description="Stability window and plan-change hysteresis (s)."
    )
    min_gain: float = Field(
        0.05, ge=0, lt=1, description="Amdahl cap: stop adding cores below this latency gain."
    )
    variant: VariantChoice = Field(None, description="Fixed variant per stage.")
    utilization: float = Field(
        0.8, gt=0, le=1, description="Target utilisation (headroom); project default 0.8."
    )
    surge_rate: Literal["observed", "forecast"] = Field(
        "observed", description="Rate the 1-s surge test reads (paper: observed)."
    )
    variants: Literal["fixed", "auto"] = Field(
        "fixed",
        description="fixed: one version per stage (`variant`; the paper). auto: per stage the "
        "most accurate version whose capacity carries the load (Tidal's extension).",
    )
    variant_margin: float = Field(
        0.2, ge=0, le=2, description="auto: a more accurate version must carry (1+this) x the peak."
    )
    variant_hold_s: int = Field(
        30, ge=1, le=3600, description="auto: peak window and hold after a version change (s)."
    )

    @model_validator(mode="after")
    def _one_way(self) -> ThemisOptions:
        if self.variants == "auto" and self.variant is not None:
            raise ValueError(
                f"variant ({self.variant!r}) fixes the versions; it cannot be combined with "
                "variants ('auto'): drop one"
            )
        return self


@register("themis")
class Themis:
    """Vertical-then-horizontal autoscaler with an optimal DP for the joint problem."""

    name = "themis"
    interval_s = 1.0
    resize_mode = RESIZE_IN_PLACE
    Options = ThemisOptions

    def __init__(
        self,
        core_step: float = 0.5,
        resolution_ms: float | None = None,
        tolerance: float = 0.1,
        stable_window_s: int = 30,
        min_gain: float = 0.05,
        variant: VariantChoice = None,
        utilization: float = 0.8,
        surge_rate: str = "observed",
        variants: str = "fixed",
        variant_margin: float = 0.2,
        variant_hold_s: int = 30,
    ) -> None:
        self.core_step, self.resolution_ms = core_step, resolution_ms
        self.tolerance, self.stable_window_s = tolerance, stable_window_s
        self.min_gain, self.variant = min_gain, variant
        self.utilization, self.surge_rate = utilization, surge_rate
        self.variants, self.variant_margin = variants, variant_margin
        self.variant_hold_s = variant_hold_s

    def _res(self, slo_ms: float) -> float:
        return self.resolution_ms or max(slo_ms / 2000.0, 0.01)

    def grids(self, ctx: PlanContext, chosen: list[VariantProfile]) -> list[list[float]]:
        step = node_step(self.core_step, ctx.capacity.cores_per_node)
        if step == self.core_step:
            return [
                core_grid(amdahl_cap(v, ctx.capacity, step, self.min_gain), step) for v in chosen
            ]
        return [node_grid(amdahl_cap(v, ctx.capacity, step, self.min_gain), step) for v in chosen]

    def solve(
        self,
        ctx: PlanContext,
        chosen: list[VariantProfile],
        replicas: list[int] | None = None,
    ) -> Plan | None:
        """Optimal plan (DP); `replicas` fixes n per stage. None if no plan meets the SLO."""
        lam = ctx.load
        grids = self.grids(ctx, chosen)
        opts = [
            stage_options(
                v,
                lam,
                ctx.capacity,
                g,
                None if replicas is None else replicas[i],
                self.utilization,
            )
            for i, (v, g) in enumerate(zip(chosen, grids, strict=True))
        ]
        picked = min_cost(opts, ctx.slo_ms, self._res(ctx.slo_ms))
        if picked is None:
            return None
        return Plan(
            stages=tuple(
                stage_plan(st.stage, v.name, *o.payload)
                for st, v, o in zip(ctx.stages, chosen, picked, strict=True)
            )
        )

    def fastest(self, ctx: PlanContext, chosen: list[VariantProfile], reason: str) -> Plan:
        """Best effort: per stage the lowest-latency option that carries the load."""
        stages = []
        for st, v, g in zip(ctx.stages, chosen, self.grids(ctx, chosen), strict=True):
            opts = stage_options(v, ctx.load, ctx.capacity, g, None, self.utilization) or [
                Option(
                    0.0,
                    0.0,
                    (
                        ctx.capacity.nodes * int(ctx.capacity.cores_per_node / g[-1] + 1e-9),
                        g[-1],
                        1,
                    ),
                )
            ]
            n, c, b = min(opts, key=lambda o: (o.latency_ms, o.cost)).payload
            stages.append(stage_plan(st.stage, v.name, n, c, b))
        # the nodes hold it: fewer replicas of the largest stage until it fits (else the
        # actuator refuses it and the plan in force stays, however small)
        while not fits(Plan(stages=tuple(stages)), ctx.capacity):
            i = max(range(len(stages)), key=lambda k: stages[k].total_cores)
            if stages[i].replicas <= 1:
                break
            stages[i] = stages[i].model_copy(update={"replicas": stages[i].replicas - 1})
        return Plan(stages=tuple(stages), feasible=False, reason=reason)

    def most_that_fits(
        self, ctx: PlanContext, chosen: list[VariantProfile], steps: int = 12
    ) -> tuple[Plan | None, float]:
        """Overload: the plan for the highest rate up to the load whose cheapest plan (the
        joint DP) fits the nodes, and that rate, by bisection; (None, 0) if none does. It
        uses the cluster's cores instead of keeping a smaller plan, and says so (flagged
        infeasible: the load beyond that rate is refused). Before, the plan for the whole
        load was returned, did not fit, was refused by the actuator, and a surge was served
        on the plan in force: measured, 1.5 of 2 cores used (one machine) and 1.33 of 3 x
        2/3 (Ray) for the whole of the surge in `tidal bench ray-cluster`."""
        best: Plan | None = None
        lo, hi = 0.0, float(ctx.load)
        for _ in range(steps):
            mid = 0.5 * (lo + hi)
            plan = self.solve(replace(ctx, forecast=mid), chosen)
            if plan is not None and fits(plan, ctx.capacity):
                best, lo = plan, mid
            else:
                hi = mid
            if hi - lo <= 1e-3 * max(ctx.load, 1.0):
                break
        return best, lo

    def stable(self, ctx: PlanContext) -> bool:
        """The observed level held over the window and the forecast agrees with it.

        Steady: the window (`stable_window_s`) is cut into three blocks; every block's mean
        rate is within `tolerance` of the window's mean, plus twice the Poisson counting noise
        of a block mean (``sqrt(mean/block)``): per-second counts are noisy (sd ``sqrt(mean)``,
        14% at 50 req/s), so single seconds are not compared. Agrees: the forecast lies within
        `tolerance` of the observed range, from the window's mean (a mean predictor) to its
        highest second (a max-of-horizon predictor such as the IPA-setting LSTM); no forecast
        (planning on the observed rate) agrees by definition.
        """
        if not ctx.rate_history:
            return True
        hist = np.asarray(ctx.rate_history[-self.stable_window_s :], dtype=np.float64)
        mean = float(hist.mean())
        k = 3 if len(hist) >= 3 else 1
        blocks = np.array_split(hist, k)
        size = min(len(b) for b in blocks)
        band = self.tolerance * max(mean, 1.0) + 2.0 * np.sqrt(max(mean, 1.0) / size)
        steady = all(abs(float(b.mean()) - mean) <= band for b in blocks)
        if ctx.forecast is None:
            return steady
        lo = (1.0 - self.tolerance) * mean
        hi = (1.0 + self.tolerance) * max(float(hist.max()), 1.0)
        return steady and lo - 1e-9 <= ctx.load <= hi + 1e-9

    def carries(self, ctx: PlanContext, chosen: list[VariantProfile]) -> bool:
        """Whether the plan in force carries the load within the SLO."""
        assert ctx.current is not None
        lat = 0.0
        for st, v in zip(ctx.stages, chosen, strict=True):
            sp = current_stage(ctx, st.stage)
            if sp is None or sp.variants[0].name != v.name:
                return False
            if sp.replicas * v.throughput(sp.batch, sp.cores) < ctx.load - 1e-9:
                return False
            lat += stage_latency_ms(v, sp.batch, sp.cores, ctx.load)
        return lat <= ctx.slo_ms + 1e-9

    def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
        check_context(ctx)
        prev = ctx.state if isinstance(ctx.state, ThemisState) else ThemisState()
        if self.variants == "auto":
            chosen, note = self.pick(ctx, prev)
        else:
            chosen, note = pick_variants(ctx, self.variant), ""
        plan, st = self._decide(ctx, prev, chosen, switched=bool(note))
        if note:
            plan = plan.model_copy(update={"reason": "; ".join(filter(None, (note, plan.reason)))})
        changed = ctx.current is None or plan.stages != ctx.current.stages
        return plan, replace(
            st,
            changed_at=ctx.now if changed else prev.changed_at,
            variant_at=ctx.now if note else prev.variant_at,
        )

    # ------------------------------------------------------------ versions by load (auto)
    def capable(self, ctx: PlanContext, combo: list[VariantProfile], rate: float) -> bool:
        """Whether the versions `combo` carry `rate` req/s: the joint DP finds a plan within
        the SLO at the `utilization` headroom, and it fits the nodes."""
        for v, g in zip(combo, self.grids(ctx, combo), strict=True):
            # cheap bound first: every core of the cluster at the best rate per core
            best = max(v.throughput(b, c) / c for b in BATCHES for c in g)
            if rate > self.utilization * ctx.capacity.total_cores * best + 1e-9:
                return False
        target = self.solve(replace(ctx, forecast=rate), combo)
        return target is not None and fits(target, ctx.capacity)

    def capable_over(
        self, ctx: PlanContext, combo: list[VariantProfile], lo: float, hi: float
    ) -> bool:
        """`capable` at every rate of a geometric grid from `lo` to `hi` (both included, at
        most `RANGE_POINTS`). Capability is not monotone in the rate (a larger batch becomes
        feasible as a higher rate fills it faster), so a version that carries `hi` may not
        carry the rate in between: switching to it on `hi` alone flapped (v2 "carries" 156
        req/s, then "cannot carry" 120 a second later, four switches in 35 s)."""
        if hi <= lo * (1.0 + 1e-9):
            return self.capable(ctx, combo, hi)
        lo = max(lo, hi / 4.0)  # idle (lo = 0): from a quarter of the peak up
        n = RANGE_POINTS
        return all(self.capable(ctx, combo, lo * (hi / lo) ** (i / (n - 1))) for i in range(n))

    def ranked(self, ctx: PlanContext) -> list[list[VariantProfile]]:
        """Combinations of one version per stage, most accurate (sum over stages) first; ties:
        the versions in force, then candidate order. At most `MAX_COMBOS` for pipelines of up
        to 8 stages: beyond, each stage keeps its most accurate versions and its fastest."""
        per = [list(st.variants) for st in ctx.stages]
        if np.prod([len(p) for p in per]) > MAX_COMBOS:
            k = max(2, int(MAX_COMBOS ** (1.0 / len(per))))
            per = [_trim(p, k) for p in per]
        cur = self.in_force(ctx)
        now = None if cur is None else [v.name for v in cur]
        index = [{v.name: i for i, v in enumerate(st.variants)} for st in ctx.stages]

        def key(combo: tuple[VariantProfile, ...]) -> tuple[float, bool, list[int]]:
            names = [v.name for v in combo]
            return (
                -_accuracy(combo),
                names != now,
                [ix[n] for ix, n in zip(index, names, strict=True)],
            )

        return [list(c) for c in sorted(itertools.product(*per), key=key)]

    def in_force(self, ctx: PlanContext) -> list[VariantProfile] | None:
        """The version of every stage in the plan in force, or None (no plan, a stage with
        several versions or a version that is no longer a candidate)."""
        out = []
        for st in ctx.stages:
            sp = current_stage(ctx, st.stage)
            if sp is None or len(sp.variants) != 1:
                return None
            v = next((v for v in st.variants if v.name == sp.variants[0].name), None)
            if v is None:
                return None
            out.append(v)
        return out

    def pick(self, ctx: PlanContext, st: ThemisState) -> tuple[list[VariantProfile], str]:
        """`variants="auto"`: the version per stage (module docstring) and, when it changes,
        the reason ('' when the versions in force are kept)."""
        rate = max(ctx.load, ctx.observed)
        cur = self.in_force(ctx)
        ranked = self.ranked(ctx)
        if cur is not None and self.capable(ctx, cur, rate):
            if st.variant_at is not None and ctx.now - st.variant_at < self.variant_hold_s - 1e-9:
                return cur, ""
            peak = max((*ctx.rate_history[-self.variant_hold_s :], rate))
            up = (1.0 + self.variant_margin) * peak
            for combo in ranked:
                if _accuracy(combo) <= _accuracy(cur) + 1e-9:
                    break
                if self.capable_over(ctx, combo, rate, up):
                    why = (
                        f"carries {1 + self.variant_margin:g} x {peak:.4g} req/s (the peak of the "
                        f"last {self.variant_hold_s} s)"
                    )
                    return combo, _note(cur, combo, why)
            return cur, ""
        for combo in ranked:
            if self.capable(ctx, combo, rate):
                why = "the most accurate that carries"
                if cur is not None:
                    why = f"{_names(cur)} cannot carry"
                why += (
                    f" {rate:.4g} req/s within the {ctx.slo_ms:g} ms SLO on "
                    f"{ctx.capacity.nodes} x {ctx.capacity.cores_per_node:g} cores at "
                    f"utilisation {self.utilization:g}"
                )
                return combo, _note(cur, combo, why)
        fastest = [
            max(s.variants, key=lambda v: v.throughput(BATCHES[-1], 1.0)) for s in ctx.stages
        ]
        if cur is not None and [v.name for v in fastest] == [v.name for v in cur]:
            return cur, ""
        return fastest, _note(cur, fastest, f"no version carries {rate:.4g} req/s: the fastest")

    # ------------------------------------------------------------ the two stages
    def _decide(
        self,
        ctx0: PlanContext,
        st: ThemisState,
        chosen: list[VariantProfile],
        switched: bool = False,
    ) -> tuple[Plan, ThemisState]:
        # stage 1 reads the observed rate (every second); stage 2 the forecast, never below
        # what is observed now (else the next second's stage 1 undoes it)
        rate1 = ctx0.observed if self.surge_rate == "observed" else ctx0.load
        obs = replace(ctx0, forecast=rate1)
        ctx = replace(ctx0, forecast=max(ctx0.load, ctx0.observed))
        if ctx.current is None or switched:  # a new version's replicas are new: plan afresh
            return self._joint(ctx, chosen, ThemisState() if switched else st)
        if st.target is not None:  # moving to a target: shrink cores once new replicas run
            starting = any(ctx.pending.starting_replicas.get(s.stage, 0) > 0 for s in ctx.stages)
            short = any(
                (c := current_stage(ctx, t.stage)) is None or c.replicas < t.replicas
                for t in st.target.stages
            )
            if starting or short:
                return ctx.current, st
            if self.carries(replace(obs, current=st.target), chosen):
                return st.target, ThemisState()
            st = ThemisState()
        if not self.carries(obs, chosen):  # surge: vertical, in place, at once
            reps = [current_stage(obs, s.stage) for s in obs.stages]
            if all(r is not None for r in reps):
                vert = self.solve(obs, chosen, [r.replicas for r in reps if r is not None])
                if vert is not None and fits(vert, obs.capacity):
                    return vert, st
            return self._joint(obs, chosen, st)
        settled = st.changed_at is None or ctx.now - st.changed_at >= self.stable_window_s - 1e-9
        if settled and self.stable(ctx0):
            target = self.solve(ctx, chosen)
            # move only for a strictly cheaper plan: a tie is not worth a cold start
            if target is not None and target.total_cores < ctx.current.total_cores - 1e-9:
                return self._joint(ctx, chosen, st)
        return ctx.current, st

    def _joint(
        self, ctx: PlanContext, chosen: list[VariantProfile], st: ThemisState
    ) -> tuple[Plan, ThemisState]:
        target = self.solve(ctx, chosen)
        if target is None or not fits(target, ctx.capacity):
            where = f"{ctx.capacity.nodes} x {ctx.capacity.cores_per_node:g} cores"
            why = (
                f"no configuration meets the {ctx.slo_ms:g} ms SLO at {ctx.load:g} req/s"
                if target is None
                else f"the cheapest plan ({target.total_cores:g} cores) does not fit {where}"
            )
            capped, rate = self.most_that_fits(ctx, chosen)
            if capped is not None:
                why += f"; planned for {rate:.4g} req/s, the most that fits {where}"
                held = ctx.current
                # the plan in force as good as the capped one: no transition (each one is a
                # cold start; measured: 5 x 1/3 <-> 2 x 2/3 flapped on Ray mid-surge)
                if (
                    held is not None
                    and fits(held, ctx.capacity)
                    and self.carries(replace(ctx, forecast=rate), chosen)
                ):
                    return held.model_copy(update={"feasible": False, "reason": why}), st
                return capped.model_copy(update={"feasible": False, "reason": why}), ThemisState()
            if target is None:
                return self.fastest(ctx, chosen, why), ThemisState()
            return target.model_copy(update={"feasible": False, "reason": why}), ThemisState()
        if ctx.current is None:
            return target, ThemisState()
        grow = False
        stages: list[StagePlan] = []
        for sp in target.stages:
            cur = current_stage(ctx, sp.stage)
            if (
                cur is not None
                and cur.variants[0].name == sp.variants[0].name
                and sp.replicas > cur.replicas
                and cur.cores > sp.cores
            ):
                grow = True  # keep the larger cores until the new replicas are ready
                stages.append(sp.model_copy(update={"cores": cur.cores, "batch": cur.batch}))
            else:
                stages.append(sp)
        if grow and fits(Plan(stages=tuple(stages)), ctx.capacity):
            return Plan(stages=tuple(stages)), ThemisState(target=target)
        return target, ThemisState()


def _accuracy(combo: Sequence[VariantProfile]) -> float:
    return float(sum(v.accuracy for v in combo))


def _names(combo: Sequence[VariantProfile]) -> str:
    return ", ".join(v.name for v in combo)


def _note(cur: list[VariantProfile] | None, new: list[VariantProfile], why: str) -> str:
    """The reason of a version change: the stages that change, old -> new, and why."""
    if cur is None:
        return f"versions (auto): {_names(new)} ({why})"
    moves = [f"{a.name} -> {b.name}" for a, b in zip(cur, new, strict=True) if a.name != b.name]
    return f"versions (auto): {', '.join(moves)} ({why})"


def _trim(variants: list[VariantProfile], k: int) -> list[VariantProfile]:
    """The `k - 1` most accurate versions and the fastest (largest batch, 1 core)."""
    fastest = max(variants, key=lambda v: v.throughput(BATCHES[-1], 1.0))
    top = sorted(variants, key=lambda v: -v.accuracy)[: k - 1]
    return top + ([fastest] if fastest not in top else [])
