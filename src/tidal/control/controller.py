"""The control loop: monitor -> forecast -> plan -> actuate, once per tick.

One controller for every substrate: the live gateway and Ray (`tick()` once per second from
`run()`), and the simulator (`tidal.sim.engine` calls `decide(now)` at the planner's ticks
with a monitor over its per-second series, `tidal.sim.monitor`). The plan-handling rules
below hold in all of them.

Contract:
- ``tick()`` samples the monitor every call (the tick period, 1 s by default) and asks the
  planner for a decision when the planner's ``interval_s`` has elapsed since the last one.
  The planner is called through the planners' wrapper (bounds, cool-downs, stabilization)
  when the caller passes a wrapped planner; the controller itself adds nothing to the policy.
- A plan flagged ``feasible=False`` is the planner's best effort under overload (themis'
  most-that-fits, sponge's cores scaled down to the nodes, ipa's and infadapter's fastest
  options): it is applied when it fits the capacity (`tidal.planners.common.fits`) and logged
  as infeasible with its reason; keeping the plan in force instead would serve a surge on a
  plan sized for less load (measured with themis' overload plan kept out, `tidal bench
  ray-cluster`: 1.5 of 2 cores used for the whole surge; `Themis.most_that_fits`).
  A flagged plan that does not fit the nodes (the planner asked for more than exists), a
  plan the actuator refuses, or a planner exception leaves the plan in force unchanged and
  logs the reason (``kept-last-feasible``). ``apply_best_effort`` (``--best-effort``) also
  hands a flagged plan that does not fit to the actuator (the simulator's and Ray's leave
  the replicas that do not fit pending; the local one refuses it). With no plan in force at
  all (a simulation started without an initial plan) the first plan is applied as best
  effort: there is nothing to keep.
- The controller holds no serving state: the data plane keeps serving the last applied plan
  if the controller stops or crashes, and a new controller starts from ``actuator.current()``.
- Every decision goes to the DecisionLog with its inputs, output, decision time and, once the
  actuator reports it, the time the plan took to take effect.
- Live calibration (``calibrate=True``): the profile the planner sees is scaled, per stage, by
  the ratio of the observed mean batch service time (replica busy time / batches, over the
  planner's window) to the profile's ``l(b, c)`` at the observed mean batch and the cores in
  force (smoothed, clamped to [0.5, 10], after at least `MIN_BATCHES` batches). On a machine
  shared with other work the profile measured on idle cores is optimistic; this keeps the
  planner's model true to the machine as it is. The factors are logged with each decision.
  A factor belongs to the variant it was measured on and scales only that variant's profile
  (remembered when another variant takes over): a tiny model's ratio is mostly IPC overhead
  (measured: 10x, the clamp, for a 0.1 ms model), which says nothing of a 40 ms one's, and
  scaling every version by it kept a planner that chooses versions by load (themis
  `variants: auto`) from ever returning to the larger one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tidal.control.decisions import Decision, DecisionLog, plan_summary
from tidal.control.monitor import MonitorView
from tidal.core.actuator import Actuation, Actuator
from tidal.core.clock import Clock
from tidal.core.plan import Plan
from tidal.core.profile import VariantProfile
from tidal.planners.base import PlanContext, Planner, StageCandidates
from tidal.planners.common import fits

log = logging.getLogger("tidal.control")

MIN_BATCHES = 5
SLOWDOWN_BOUNDS = (0.5, 10.0)
SLOWDOWN_SMOOTHING = 0.3

Forecaster = Callable[[Sequence[float]], float | None]
"""Predicts the load (req/s) for the planner's horizon from the per-second rate history."""


@dataclass
class ForecastPoint:
    t: float
    value: float | None


def same_allocation(a: Plan | None, b: Plan | None) -> bool:
    """True when two plans allocate the same (flags and reasons ignored)."""
    if a is None or b is None:
        return a is b
    return a.stages == b.stages


class Controller:
    """One closed loop for one pipeline. Not thread-safe: drive it from one task."""

    def __init__(
        self,
        planner: Planner,
        actuator: Actuator,
        monitor: MonitorView,
        stages: tuple[StageCandidates, ...],
        slo_ms: float,
        clock: Clock,
        *,
        forecaster: Forecaster | None = None,
        decisions: DecisionLog | None = None,
        window_s: float | None = None,
        apply_best_effort: bool = False,
        policy: str | None = None,
        calibrate: bool = False,
        timer: Clock | None = None,
        strict: bool = False,
    ) -> None:
        """`timer`: the clock that times a decision (default `clock`; the simulator passes a
        monotonic one, its `clock` being simulated). `strict`: planner and actuator
        exceptions propagate instead of being logged (the simulator: a plan that can never
        fit is the user's error, and a run must not go on silently without a planner)."""
        if slo_ms <= 0:
            raise ValueError(f"slo_ms must be > 0, got {slo_ms}")
        self.planner = planner
        self.actuator = actuator
        self.monitor = monitor
        self.stages = stages
        self.slo_ms = slo_ms
        self.clock = clock
        self.timer: Clock = timer or clock
        self.strict = strict
        self.forecaster = forecaster
        self.decisions = decisions or DecisionLog()
        self.window_s = window_s
        self.apply_best_effort = apply_best_effort
        self.policy: str = policy or str(getattr(planner, "name", type(planner).__name__))
        self.state: Any = None
        self.last_decision_t: float | None = None
        self.last_feasible: Plan | None = actuator.current()
        self.forecasts: list[ForecastPoint] = []
        self.calibrate = calibrate
        self.slowdown: dict[str, float] = {}
        """Per stage, the factor of the variant in force (logged)."""
        self.variant_slowdown: dict[tuple[str, str], float] = {}
        """Per (stage, variant), the factor measured while that variant was in force."""
        self._unsettled: list[tuple[Decision, Actuation]] = []
        self._tick_s = 0.0

    @property
    def interval_s(self) -> float:
        return float(getattr(self.planner, "interval_s", 1.0))

    def due(self, now: float) -> bool:
        """Whether a decision is due at `now`: `interval_s` since the last one, less half a
        tick when `run` drives the loop (a tick woken a little late, the next on time, must
        not skip a decision)."""
        if self.last_decision_t is None:
            return True
        return now - self.last_decision_t >= self.interval_s - max(1e-6, 0.5 * self._tick_s)

    def tick(self, at: float | None = None) -> Decision | None:
        """One loop turn: sample, settle finished actuations, decide if due. Never raises for
        planner or actuator faults (they are logged as decisions).

        `at`: the tick's slot on the controller's schedule (`run` passes it); the decision is
        taken at that time rather than at the clock reading, so that decisions k ticks apart
        are exactly k x tick_s apart, as in the simulator. With the readings (woken up to a
        few ms early or late), the wrapped planner's own interval check (`Governed`: the
        planner runs when ``interval_s`` has passed since it last ran) skipped the planner
        at every tick read less than a second after the one that planned: 37 of 97 ticks
        of a live `tidal validate` run, so themis reacted to a surge a second late."""
        self.monitor.sample()
        now = self.clock.now() if at is None else at
        self._settle()
        if not self.due(now):
            return None
        self.last_decision_t = now
        return self.decide(now)

    def context(self, now: float) -> PlanContext:
        history = self.monitor.rate_history()
        forecast = None
        if self.forecaster is not None and history:
            forecast = self.forecaster(history)
        self.forecasts.append(ForecastPoint(now, forecast))
        del self.forecasts[:-900]
        window = self.window_s
        if window is None:  # the planner's own metric window (window_s or look_back)
            inner = getattr(self.planner, "inner", self.planner)
            own = getattr(inner, "window_s", None) or getattr(inner, "look_back", None)
            window = max(1.0, float(own or self.interval_s))
        current = self.actuator.current()
        stages = self._calibrated(current, window) if self.calibrate else self.stages
        return PlanContext(
            now=now,
            rate_history=history,
            forecast=forecast,
            stages=stages,
            current=current,
            slo_ms=self.slo_ms,
            capacity=self.actuator.capacity(),
            pending=self.actuator.pending(),
            budgets_ms=self.monitor.budgets_ms,
            observations=self.monitor.observations(window),
            state=self.state,
        )

    def _calibrated(self, current: Plan | None, window: float) -> tuple[StageCandidates, ...]:
        """The candidates with each stage's profiles scaled by its observed slowdown."""
        out = []
        for st in self.stages:
            sp = (
                None
                if current is None
                else next((x for x in current.stages if x.stage == st.stage), None)
            )
            ms, b, n = self.monitor.service(st.stage, window)
            prof = None
            if sp is not None:
                prof = next((v for v in st.variants if v.name == sp.variants[0].name), None)
            if prof is not None and sp is not None and n >= MIN_BATCHES and ms > 0:
                pred = prof.latency_ms(max(1.0, b), sp.cores_of(prof.name))
                if pred > 0:
                    lo, hi = SLOWDOWN_BOUNDS
                    r = min(hi, max(lo, ms / pred))
                    key = (st.stage, prof.name)
                    old = self.variant_slowdown.get(key, r)
                    self.variant_slowdown[key] = old + SLOWDOWN_SMOOTHING * (r - old)
            if prof is not None and (st.stage, prof.name) in self.variant_slowdown:
                self.slowdown[st.stage] = self.variant_slowdown[(st.stage, prof.name)]
            f = {v.name: self.variant_slowdown.get((st.stage, v.name), 1.0) for v in st.variants}
            if all(abs(x - 1.0) < 0.05 for x in f.values()):
                out.append(st)
                continue
            scaled = tuple(
                v if abs(f[v.name] - 1.0) < 0.05 else _scaled(v, f[v.name]) for v in st.variants
            )
            out.append(StageCandidates(st.stage, scaled))
        return tuple(out)

    def decide(self, now: float) -> Decision:
        ctx = self.context(now)
        inputs = _inputs(ctx)
        if self.calibrate:
            inputs["slowdown"] = {k: round(v, 3) for k, v in self.slowdown.items()}
        t0 = self.timer.now()
        try:
            plan, new_state = self.planner.plan(ctx)
        except Exception as e:  # a planner bug must not stop serving: keep the plan in force
            if self.strict:
                raise
            log.exception("planner %s failed", self.policy)
            return self._record(now, inputs, None, False, f"planner raised {e!r}", "error", t0)
        decision_ms = (self.timer.now() - t0) * 1000.0
        self.state = new_state
        if (
            not plan.feasible
            and not self.apply_best_effort
            and ctx.current is not None
            and not fits(plan, ctx.capacity)
        ):
            reason = plan.reason or "planner flagged the plan infeasible"
            return self._record(
                now, inputs, plan, False, reason, "kept-last-feasible", t0, decision_ms
            )
        if same_allocation(plan, ctx.current):
            return self._record(
                now, inputs, plan, plan.feasible, plan.reason, "unchanged", t0, decision_ms
            )
        try:
            act = self.actuator.apply(plan)
        except Exception as e:
            if self.strict:
                raise
            log.exception("actuator %s failed", self.actuator.name)
            return self._record(
                now, inputs, plan, plan.feasible, f"actuator raised {e!r}", "error", t0, decision_ms
            )
        if not act.accepted:
            return self._record(
                now, inputs, plan, False, act.reason, "kept-last-feasible", t0, decision_ms
            )
        if plan.feasible:
            self.last_feasible = plan
        d = self._record(now, inputs, plan, plan.feasible, plan.reason, "applied", t0, decision_ms)
        self._unsettled.append((d, act))
        self._settle()
        return d

    def _record(
        self,
        now: float,
        inputs: dict[str, Any],
        plan: Plan | None,
        feasible: bool,
        reason: str,
        action: str,
        t0: float,
        decision_ms: float | None = None,
    ) -> Decision:
        if decision_ms is None:
            decision_ms = (self.timer.now() - t0) * 1000.0
        d = Decision(
            seq=self.decisions.next_seq(),
            t=now,
            policy=self.policy,
            inputs=inputs,
            output=plan_summary(plan),
            feasible=feasible,
            reason=reason,
            action=action,
            decision_ms=round(decision_ms, 3),
        )
        if action in ("kept-last-feasible", "error"):
            log.warning("decision %d (%s): %s: %s", d.seq, self.policy, action, reason)
        self.decisions.add(d)
        return d

    def _settle(self) -> None:
        keep = []
        for d, act in self._unsettled:
            if act.settled_at is not None and act.time_to_effect_s is not None:
                self.decisions.settle(d, round(act.time_to_effect_s, 3))
            elif not act.superseded:
                keep.append((d, act))
        self._unsettled = keep

    async def run(self, tick_s: float = 1.0, stop: asyncio.Event | None = None) -> None:
        """Tick every `tick_s` seconds until `stop` is set or the task is cancelled, on a
        fixed schedule by the controller's clock (t0 + k x tick_s, as the simulator's ticks):
        the ticks' own work does not push the next one later (it did, ~10 ms a tick on a
        loaded machine: 0.9 s over 90 ticks). A tick that overruns its slot skips the slots
        it missed instead of ticking in a burst."""
        if tick_s <= 0:
            raise ValueError(f"tick_s must be > 0, got {tick_s}")
        stop = stop or asyncio.Event()
        self._tick_s = tick_s
        next_t = self.clock.now()
        while not stop.is_set():
            try:
                self.tick(at=next_t)
            except Exception:  # never let a monitoring bug kill the loop silently
                log.exception("controller tick failed")
            now = self.clock.now()
            next_t = next_slot(next_t, now, tick_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=next_t - now)


def next_slot(slot: float, now: float, tick_s: float) -> float:
    """The first slot ``slot + k x tick_s`` (k >= 1) after `now`."""
    nxt = slot + tick_s
    if nxt <= now:
        nxt += (math.floor((now - nxt) / tick_s) + 1) * tick_s
    return nxt


def _scaled(v: VariantProfile, f: float) -> VariantProfile:
    fit = v.fit.model_copy(
        update={
            "gamma": v.fit.gamma * f,
            "delta": v.fit.delta * f,
            "epsilon": v.fit.epsilon * f,
            "eta": v.fit.eta * f,
        }
    )
    return v.model_copy(update={"fit": fit})


def _inputs(ctx: PlanContext) -> dict[str, Any]:
    def r(x: float) -> float | None:
        return None if x is None or math.isnan(x) else round(x, 3)

    return {
        "rate": r(ctx.rate_history[-1]) if ctx.rate_history else 0.0,
        "forecast": None if ctx.forecast is None else r(ctx.forecast),
        "queued": len(ctx.budgets_ms),
        "min_budget_ms": r(min(ctx.budgets_ms)) if ctx.budgets_ms else None,
        "pending": {
            "starting": dict(ctx.pending.starting_replicas),
            "resizing": sorted(ctx.pending.resizing_stages),
        },
        "stages": [
            {
                "stage": o.stage,
                "rate": r(o.arrival_rate),
                "queue": o.queue_len,
                "util": r(o.cpu_utilization),
                "p99_ms": r(o.p99_ms),
            }
            for o in ctx.observations
        ],
        "current": plan_summary(ctx.current),
    }
