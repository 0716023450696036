"""`tidal validate`'s like-for-like comparison: the live run's decisions, simulated.

The closed-loop comparison (`tidal.apps.validate.validate`'s `sim`) lets the simulated
controller decide for itself. On `twitter:bursty` its themis and the live one face the same
threshold at the surge's first decision (whether a 1-core classify replica carries ~26
req/s at batch 1 or needs batch 2), and a 1% difference in the slowdown each measured or one
request more in the 1-s rate window sends them to different plans, which both then keep for
the surge: the violation rate moves by up to ~7 pp on one such decision (docs/user-guide.md,
section 5). That is a difference in the controllers' inputs (each side's own noise), not in
what the simulator predicts for a given plan.

This module separates the two questions:
- `ReplayPlanner` hands the simulated `Controller` the plan the live planner chose at the
  same tick (from the live decision log), so the simulated data plane serves the same
  sequence of plans, through the same controller rules (a flagged plan that does not fit is
  kept out, on both sides) and the simulator's own actuation (resize delay, the measured
  cold start). Everything measured for the comparison (violations, p99, core-seconds) is the
  simulator's own prediction: no live outcome goes in, only the live decisions and the
  machine's speed the closed loop already uses.
- `divergence` finds where the closed-loop simulated controller first chose another plan
  than the live one, with both sides' inputs there (the rate and slowdown each saw), so a
  closed-loop gap can be traced to its decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tidal.control.decisions import plan_from_summary
from tidal.core.plan import Plan
from tidal.planners.base import RESIZE_IN_PLACE, PlanContext
from tidal.planners.wrapper import Governance

ALIGN_TOL_S = 0.25
"""A live decision stands for the simulated tick within this of its trace time."""


def trace_times(decisions: list[dict[str, Any]], lead_s: float) -> list[float]:
    """Each live decision's time on the trace (the load starts at 0; the first decision was
    `lead_s` before it, `tidal.apps.validate.control_lead_s`)."""
    t0 = next((float(d["t"]) for d in decisions if "t" in d), 0.0)
    return [float(d.get("t", math.nan)) - t0 - lead_s for d in decisions]


class ReplayPlanner:
    """A planner that returns, at each tick, the plan the live planner returned at the same
    point of the trace (the live decision log's `output`, with its feasibility flag and
    reason); the plan in force where the live log has no decision for the tick (or the live
    planner raised). Pure: the plans are fixed at construction; ``ctx.now`` only selects.

    The simulator calls it through the same `Controller` as any planner; its `governance`
    is the live planner's interval alone (the live log's plans are already governed), so
    `Governed` adds nothing."""

    def __init__(
        self,
        name: str,
        interval_s: float,
        decisions: list[dict[str, Any]],
        lead_s: float,
        resize_mode: str = RESIZE_IN_PLACE,
    ) -> None:
        """`name`, `interval_s`, `resize_mode`: the live planner's (`Governed`'s)."""
        self.name = name
        self.resize_mode = resize_mode
        self.interval_s = interval_s
        self.governance = Governance(interval_s=interval_s)
        self.lead_s = lead_s
        self._at: list[tuple[float, Plan | None]] = []
        for t, d in zip(trace_times(decisions, lead_s), decisions, strict=True):
            out = d.get("output")
            plan = (
                plan_from_summary(out, bool(d.get("feasible", True)), str(d.get("reason") or ""))
                if out
                else None
            )
            self._at.append((t, plan))
        self.used = 0
        """Ticks answered with a live decision's plan (the rest kept the plan in force)."""

    def live_plan(self, now: float) -> Plan | None:
        """The live plan for the simulated tick at `now` (trace time; the tick at 0 stands for
        the live decision made `lead_s` before the load), None if the live log has none."""
        target = -self.lead_s if now <= 0 else now
        best: tuple[float, Plan | None] | None = None
        for t, plan in self._at:
            if abs(t - target) <= ALIGN_TOL_S and (best is None or abs(t - target) < best[0]):
                best = (abs(t - target), plan)
        return None if best is None else best[1]

    def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
        plan = self.live_plan(ctx.now)
        if plan is not None:
            self.used += 1
            return plan, None
        if ctx.current is not None:
            return ctx.current, None
        raise ValueError(f"no live decision at t={ctx.now:.3f} s and no plan in force")


def _alloc(summary: list[dict[str, Any]] | None) -> tuple[Any, ...] | None:
    if not summary:
        return None
    return tuple(
        (
            s["stage"],
            tuple((v["name"], v.get("replicas")) for v in s["variants"]),
            s["replicas"],
            float(s["cores"]),
            int(s["batch"]),
        )
        for s in summary
    )


def _in_force(decisions: list[dict[str, Any]]) -> list[tuple[Any, ...] | None]:
    """After each decision, the allocation in force (an applied decision's output, else the
    one before; the first decision's `current` to start)."""
    cur = _alloc(decisions[0].get("inputs", {}).get("current")) if decisions else None
    out = []
    for d in decisions:
        if d.get("action") == "applied":
            cur = _alloc(d.get("output"))
        out.append(cur)
    return out


@dataclass
class Divergence:
    """The first tick where the closed-loop simulated controller's plan in force differs from
    the live one's, with what each side saw there."""

    t: float
    """Trace time of the tick (s)."""
    index: int
    live: dict[str, Any]
    sim: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"t": round(self.t, 3), "decision": self.index, "live": self.live, "sim": self.sim}


def _side(d: dict[str, Any]) -> dict[str, Any]:
    inputs = d.get("inputs", {})
    return {
        "action": d.get("action"),
        "rate": inputs.get("rate"),
        "stage_rates": {s.get("stage"): s.get("rate") for s in inputs.get("stages", [])},
        "slowdown": inputs.get("slowdown"),
        "plan": [
            {k: s[k] for k in ("stage", "replicas", "cores", "batch")}
            for s in d.get("output") or []
        ],
    }


def divergence(
    live: list[dict[str, Any]], sim: list[dict[str, Any]], lead_s: float
) -> Divergence | None:
    """The first tick (in trace time, live decisions aligned to simulated ones within
    `ALIGN_TOL_S`) after which the allocations in force differ; None if they never do."""
    lf, sf = _in_force(live), _in_force(sim)
    for i, j in _aligned(live, sim, lead_s):
        if lf[i] != sf[j]:
            return Divergence(
                max(0.0, trace_times(live, lead_s)[i]), i, _side(live[i]), _side(sim[j])
            )
    return None


def _aligned(
    live: list[dict[str, Any]], sim: list[dict[str, Any]], lead_s: float
) -> list[tuple[int, int]]:
    """(live index, simulated index) of the decisions at the same tick (`ALIGN_TOL_S`)."""
    st = [float(d.get("t", math.nan)) for d in sim]  # the simulated ticks are trace times
    out = []
    j = 0
    for i, t in enumerate(trace_times(live, lead_s)):
        target = max(0.0, t)
        while j + 1 < len(st) and st[j + 1] <= target + ALIGN_TOL_S:
            j += 1
        if j < len(st) and abs(st[j] - target) <= ALIGN_TOL_S:
            out.append((i, j))
    return out


def actions_differ(live: list[dict[str, Any]], sim: list[dict[str, Any]], lead_s: float) -> int:
    """Aligned ticks whose controller action differs (e.g. a plan the live actuator refused
    and the simulated one applied); 0 when the replay took every live decision as live."""
    return sum(
        live[i].get("action") != sim[j].get("action") for i, j in _aligned(live, sim, lead_s)
    )
