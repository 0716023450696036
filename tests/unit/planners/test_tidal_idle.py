"""`tidal` when arrivals stop (one shrink at once, no hold; the replicas that carry the level
kept so a return of the load is an in-place resize; no shrink under queued work at risk),
and when a surge outruns a move in progress."""

from __future__ import annotations

import dataclasses
from typing import Any

from tidal.core.plan import Plan
from tidal.planners import Capacity, create
from tidal.planners.base import Pending, PlanContext
from tidal.planners.common import stage_plan
from tidal.planners.synthetic import replay, synthetic_context
from tidal.planners.tidal import Tidal, TidalState
from tidal.planners.tidal_moves import arrivals_stopped, keep_replicas


def _run(rates: list[float], ctx0: PlanContext, **opts: Any) -> tuple[list[Plan], Any]:
    return replay(create("tidal", **opts), rates, ctx0)


def test_arrivals_stopped_needs_zeros_unlikely_at_the_rate_before_them() -> None:
    assert arrivals_stopped((50.0,) * 30 + (0.0,), 30, 1e-3) is not None  # e^-50
    ub, before = arrivals_stopped((50.0,) * 30 + (0.0,) * 2, 30, 1e-3) or (0.0, 0.0)
    assert before == 50.0 and 3.0 < ub < 3.6  # -ln(1e-3) / 2 s
    assert arrivals_stopped((2.0,) * 30 + (0.0,), 30, 1e-3) is None  # e^-2: noise
    assert arrivals_stopped((2.0,) * 30 + (0.0,) * 4, 30, 1e-3) is not None  # e^-8
    assert arrivals_stopped((50.0,) * 30 + (0.0,), 30, 0.0) is None  # off
    assert arrivals_stopped((0.0,) * 10, 30, 1e-3) is None  # nothing before the zeros
    assert arrivals_stopped((50.0,) * 30, 30, 1e-3) is None


def test_keep_replicas_carries_the_rate_grown_to_the_largest_cores() -> None:
    base = synthetic_context(1, rps=40.0, capacity=Capacity(1, 16.0))
    v = base.stages[0].variants[0]
    cur = Plan(stages=(stage_plan("s0", v.name, 6, 1.0, 8),))
    sp = cur.stages[0]
    per = v.throughput(sp.batch, 4.0)
    n = keep_replicas(cur, [v], [[0.5, 1.0, 4.0]], 2.5 * per, 1.0)[0]
    assert n == 3
    assert keep_replicas(cur, [v], [[0.5, 1.0, 4.0]], 0.0, 1.0) == [1]


def test_tidal_shrinks_at_once_when_arrivals_stop_and_regrows_in_place() -> None:
    base = synthetic_context(1, rps=100.0, capacity=Capacity(1, 16.0))
    v = base.stages[0].variants[0]
    rates = [100.0] * 120 + [0.0] * 20 + [100.0] * 5
    plans, _ = _run(rates, base)
    busy = plans[119]
    assert plans[120].total_cores < 0.5 * busy.total_cores  # the first zero second
    assert all(p.stages == plans[120].stages for p in plans[120:140])  # one change per stop
    # load back: at once, the kept replicas grown in place (the 1-s knob, no cold start)
    idle, back = plans[120].stages[0], plans[140].stages[0]
    assert back.replicas == idle.replicas and back.cores > idle.cores
    top = max(Tidal()._dp.grids(base, [v])[0])  # the largest cores of the planner's grid
    assert idle.replicas * v.throughput(8, top) >= 100.0  # they can carry it, grown
    off, _ = _run(rates, base, idle_p=0.0)
    assert all(p.stages == off[119].stages for p in off[120:140])  # the hold, as before


def test_tidal_keeps_its_plan_in_a_stop_while_queued_requests_need_it() -> None:
    base = synthetic_context(1, rps=100.0, capacity=Capacity(1, 16.0))
    plans, st = _run([100.0] * 120, base)
    cur = plans[-1]
    planner = create("tidal")
    hist = (100.0,) * 180 + (0.0,)
    ctx = dataclasses.replace(base, now=120.0, rate_history=hist, forecast=None, current=cur,
                              state=st)  # fmt: skip
    shrunk, _ = planner.plan(ctx)
    assert shrunk.total_cores < cur.total_cores
    queued = tuple([400.0] * 200)  # 200 requests waiting, 400 ms left each
    held, _ = planner.plan(dataclasses.replace(ctx, budgets_ms=queued))
    assert held.total_cores > shrunk.total_cores


def test_tidal_acts_during_a_cold_start_when_the_rate_outgrows_the_plan_moved_to() -> None:
    base = synthetic_context(1, rps=40.0, capacity=Capacity(1, 16.0))
    v = base.stages[0].variants[0]
    cur = Plan(stages=(stage_plan("s0", v.name, 4, 1.0, 8),))  # the interim in force
    target = Plan(stages=(stage_plan("s0", v.name, 4, 0.5, 8),))  # once the replicas start
    starting = Pending(starting_replicas={"s0": 2})
    st = TidalState(start=0.0, target=target)
    ctx = dataclasses.replace(base, now=300.0, rate_history=(40.0,) * 300, forecast=None,
                              current=cur, pending=starting, state=st)  # fmt: skip
    carried = v.throughput(8, 1.0) * 4
    low = dataclasses.replace(ctx, rate_history=(0.5 * carried,) * 300)
    kept, _ = Tidal().plan(low)  # the plan in force carries it: wait for the replicas
    assert kept.stages == cur.stages
    high = dataclasses.replace(ctx, rate_history=(0.5 * carried,) * 297 + (1.5 * carried,) * 3)
    grown, st2 = Tidal().plan(high)  # it outgrew both: grow now, not after the cold start
    sp = grown.stages[0]
    assert sp.replicas * v.throughput(sp.batch, sp.cores) > 1.5 * carried
    assert isinstance(st2, TidalState) and st2.urgent_at == 300.0
