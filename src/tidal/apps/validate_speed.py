"""`tidal validate`: the live machine's speed, from the live controller's slowdown log.

The live controller logs, with each decision, a smoothed slowdown per stage (measured batch
service time over the profile's, `tidal.control.controller`). These functions recover each
decision's own measurement, place it on the trace (`slowdown_schedule`), and, with the CPU
quota simulated, solve for the speed that makes the simulated controller measure what the
live one did (`fit_speed`). Moved out of `tidal.apps.validate` (which re-exports them).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Live slowdown measurements averaged into the simulated machine's speed at each point of
# the trace (see `slowdown_schedule`): 1 = each measurement for its own window. A centred
# mean of 5 leaked the throttled seconds after the surge's start into the seconds before it
# (a 0.5-core replica runs at up to a whole core's speed while its CPU quota lasts: live
# 0.65, 0.90 then 1.62, 1.50), so the simulated controller measured a slower machine than
# the live one at the surge's first decision and chose a larger batch (b4 against b2).
SCHEDULE_SPAN = 1
# `fit_speed`: simulations solving for the machine's speed under the simulated CPU quota, and
# the range a speed factor is kept in.
SPEED_ROUNDS = 5
SPEED_BOUNDS = (0.2, 10.0)


def measured_slowdowns(
    decisions: list[dict[str, Any]],
) -> list[tuple[float | None, str, float, float, bool]]:
    """Each decision's own slowdown measurement per stage, recovered from the smoothed
    factor the live controller logs (an EWMA, `SLOWDOWN_SMOOTHING`, started at its first
    measurement): (decision time or None, stage, factor, the stage's logged arrival rate,
    whether the factor changed, i.e. the controller measured at that decision)."""
    from tidal.control.controller import SLOWDOWN_BOUNDS, SLOWDOWN_SMOOTHING

    out: list[tuple[float | None, str, float, float, bool]] = []
    prev: dict[str, float] = {}
    for d in decisions:
        inputs = d.get("inputs", {})
        rates = {s.get("stage"): float(s.get("rate") or 0.0) for s in inputs.get("stages", [])}
        t = float(d["t"]) if "t" in d else None
        for k, v in (inputs.get("slowdown") or {}).items():
            v = float(v)
            raw = v if k not in prev else prev[k] + (v - prev[k]) / SLOWDOWN_SMOOTHING
            changed = k not in prev or v != prev[k]
            prev[k] = v
            raw = min(SLOWDOWN_BOUNDS[1], max(SLOWDOWN_BOUNDS[0], raw))
            out.append((t, k, raw, rates.get(k, 0.0), changed))
    return out


def live_slowdown(decisions: list[dict[str, Any]]) -> dict[str, float]:
    """Per-stage slowdown the live controller measured: how much slower the live machine ran
    than the profile. Each decision's own measurement (`measured_slowdowns`, usually taken
    first at a trickle of batch-1 requests before a surge) is averaged weighted by the
    stage's arrival rate at each decision (the plain mean when no rate was logged), so the
    factor is the one under which the requests were served."""
    acc: dict[str, list[tuple[float, float]]] = {}
    for _, k, raw, rate, _ in measured_slowdowns(decisions):
        acc.setdefault(k, []).append((raw, rate))
    out = {}
    for k, pairs in acc.items():
        f = np.array([p[0] for p in pairs])
        w = np.array([p[1] for p in pairs])
        out[k] = float((f * w).sum() / w.sum()) if w.sum() > 0 else float(f.mean())
    return out


def schedule_points(
    decisions: list[dict[str, Any]],
    stages: list[str],
    lead_s: float,
    window_s: float = 1.0,
) -> dict[str, list[tuple[float, float]]]:
    """Per stage in `stages`, the live measurements (`measured_slowdowns`, decisions where the
    factor changed) placed on the trace: (``t - t_first - lead_s - window_s``, factor), the
    planner's window before the decision (the controller's first decision came `lead_s`
    before the load)."""
    t0 = next((float(d["t"]) for d in decisions if "t" in d), None)
    meas: dict[str, list[tuple[float, float]]] = {}
    for t, k, raw, _, changed in measured_slowdowns(decisions):
        if t is not None and t0 is not None and changed and k in stages:
            meas.setdefault(k, []).append((t - t0 - lead_s - window_s, raw))
    return meas


def schedule_of(
    meas: dict[str, list[tuple[float, float]]], stages: list[str], span: int = SCHEDULE_SPAN
) -> list[tuple[float, list[float]]]:
    """The machine's speed over the trace from per-stage (time, factor) points
    (`schedule_points`): a stage's factor is the mean of its `span` points centred there,
    held until the next; before a stage's first point, its first factor; 1.0 for a stage
    without points. [] without points."""
    if not any(meas.values()):
        return []
    half = max(0, span // 2)
    smooth: dict[str, list[tuple[float, float]]] = {}
    for k, pts in meas.items():
        vals = [f for _, f in pts]
        smooth[k] = [
            (t, float(np.mean(vals[max(0, i - half) : i + half + 1])))
            for i, (t, _) in enumerate(pts)
        ]
    times = sorted({max(0.0, t) for pts in smooth.values() for t, _ in pts} | {0.0})
    out: list[tuple[float, list[float]]] = []
    for t in times:
        row = []
        for k in stages:
            got = smooth.get(k)
            if not got:
                row.append(1.0)
                continue
            at = [f for tt, f in got if max(0.0, tt) <= t]
            row.append(at[-1] if at else got[0][1])
        if not out or row != out[-1][1]:
            out.append((t, row))
    return out


def slowdown_schedule(
    decisions: list[dict[str, Any]],
    stages: list[str],
    lead_s: float,
    window_s: float = 1.0,
    span: int = SCHEDULE_SPAN,
) -> list[tuple[float, list[float]]]:
    """The live machine's slowdown over the trace's time, per stage in `stages` order: each
    live measurement (`schedule_points`) covers the planner's window before its decision; a
    stage's factor is the mean of its `span` measurements centred there (default 1: the
    measurement itself; a wider span averages out the noise of a few batches, which the
    simulator adds again, but smears a change of speed into the seconds before it), held
    until the next (`schedule_of`). [] when nothing was measured."""
    return schedule_of(schedule_points(decisions, stages, lead_s, window_s), stages, span)


def held_slowdowns(
    decisions: list[dict[str, Any]], offset_s: float, window_s: float
) -> dict[str, list[tuple[float, float]]]:
    """Per stage, the smoothed slowdown each decision planned with (as logged), at
    ``t - offset_s - window_s`` (the trace's time of the decision's window, as
    `schedule_points`)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for d in decisions:
        if "t" not in d:
            continue
        for k, v in (d.get("inputs", {}).get("slowdown") or {}).items():
            out.setdefault(k, []).append((float(d["t"]) - offset_s - window_s, float(v)))
    return out


def fit_speed(
    live: dict[str, list[tuple[float, float]]],
    held: dict[str, list[tuple[float, float]]],
    stages: list[str],
    window_s: float,
    run: Any,
    rounds: int = SPEED_ROUNDS,
) -> tuple[Any, list[tuple[float, list[float]]], float]:
    """The simulated machine's speed that makes the simulated controller measure what the
    live one measured. With the CPU quota simulated (`SimConfig.cpu_quota`), a live
    measurement (mean batch time over the profile's l(b, c)) holds both the machine's speed
    and the quota's bursts (a 0.5-core replica runs a lone batch at a whole CPU's speed),
    which the simulator now adds itself; so the speed is solved for: start from the live
    factors (`live`, `schedule_points`), simulate (`run(schedule) -> (result, decisions)`,
    the simulated decision log), and correct each point by live / simulated factor at the
    same decision (the simulated decisions' own measurements, on the trace's time:
    decision time - `window_s`), `rounds` times. Returns the (result, schedule, error) of
    the round whose simulated controller planned with the slowdowns closest to the live
    one's (`held`, `held_slowdowns` of the live log: mean squared log ratio over the live
    decisions, a simulated decision that had not measured yet counting as 1.0, the
    controller's default). The choice looks at the controller's inputs only, never at the
    outcome being validated."""
    speed = {k: [(t, f) for t, f in pts] for k, pts in live.items()}
    best: tuple[Any, list[tuple[float, list[float]]], float] | None = None
    for _ in range(max(1, rounds)):
        sched = schedule_of(speed, stages)
        res, decs = run(sched)
        got: dict[str, list[tuple[float, float]]] = {}
        for t, k, raw, _, changed in measured_slowdowns(decs):
            if t is not None and changed:
                got.setdefault(k, []).append((t - window_s, raw))
        for k, pts in live.items():
            sim_pts = got.get(k, [])
            new = []
            for (t, f_live), (_, s) in zip(pts, speed[k], strict=True):
                near = [f for tt, f in sim_pts if abs(tt - t) < 0.05]
                if near and near[0] > 0 and f_live > 0:
                    s = min(SPEED_BOUNDS[1], max(SPEED_BOUNDS[0], s * f_live / near[0]))
                new.append((t, s))
            speed[k] = new
        sim_held = held_slowdowns(decs, 0.0, window_s)
        errs: list[float] = []
        for k, pts in held.items():
            sim_pts = sim_held.get(k, [])
            for t, v in pts:
                near = [f for tt, f in sim_pts if abs(tt - t) < 0.05]
                if v > 0:
                    errs.append(math.log(v / (near[0] if near and near[0] > 0 else 1.0)) ** 2)
        err = float(np.mean(errs)) if errs else 0.0
        if best is None or err < best[2]:
            best = (res, sched, err)
    assert best is not None
    return best
