"""`tidal`'s in-place knob: an urgent growth in place alone uses the finer `in_place_step`
grid, and a move's follow-up, when its target no longer carries the fast rate, resizes the
replicas in force instead of keeping the interim's larger cores."""

from __future__ import annotations

import dataclasses

from tidal.core.plan import Plan
from tidal.planners import Capacity
from tidal.planners import tidal_down as down
from tidal.planners.common import stage_plan
from tidal.planners.synthetic import synthetic_context
from tidal.planners.tidal import Tidal, TidalState


def test_an_urgent_growth_in_place_takes_the_finer_core_step() -> None:
    base = synthetic_context(1, rps=40.0, capacity=Capacity(1, 16.0))
    v = base.stages[0].variants[0]
    cur = Plan(stages=(stage_plan("s0", v.name, 10, 0.5, 8),))
    carried = 10 * v.throughput(8, 0.5)
    hist = (0.8 * carried,) * 297 + (1.2 * carried,) * 3  # a surge past the plan in force
    ctx = dataclasses.replace(base, now=300.0, rate_history=hist, forecast=None, current=cur,
                              state=TidalState(start=0.0))  # fmt: skip
    fine, st = Tidal().plan(ctx)
    coarse, _ = Tidal(in_place_step=0.0).plan(ctx)
    sp, sc = fine.stages[0], coarse.stages[0]
    assert isinstance(st, TidalState) and st.urgent_at == 300.0  # urgent, in place
    assert sp.replicas == sc.replicas == 10
    assert sp.cores == 0.75 and sc.cores == 1.0  # +50% cores, not +100%
    assert 10 * v.throughput(sp.batch, sp.cores) > 1.2 * carried


def test_a_follow_up_resizes_in_place_when_its_target_no_longer_carries_the_rate() -> None:
    base = synthetic_context(1, rps=40.0, capacity=Capacity(1, 16.0))
    v = base.stages[0].variants[0]
    interim = Plan(stages=(stage_plan("s0", v.name, 9, 1.5, 8),))  # new replicas ready
    target = Plan(stages=(stage_plan("s0", v.name, 9, 0.5, 8),))  # too small by now
    r = 1.2 * 9 * v.throughput(8, 0.5)
    st0 = TidalState(start=0.0, target=target)
    ctx = dataclasses.replace(base, now=300.0, rate_history=(r,) * 300, forecast=None,
                              current=interim, state=st0)  # fmt: skip
    planner = Tidal()
    plan, st = planner.plan(ctx)
    sp = plan.stages[0]
    assert sp.replicas == 9 and 0.5 < sp.cores < 1.5  # resized, neither target nor interim
    assert not planner.at_risk(ctx, plan, [v], r)
    assert isinstance(st, TidalState) and st.target is None


def test_a_follow_up_is_sized_for_the_fast_rate_not_hedged_again() -> None:
    # the fast rate is already the peak the move outran: hedging it again (peak/level
    # quantile of a bursty history) held 9 x 1.0 cores where 9 x 0.75 carried the surge
    base = synthetic_context(1, rps=40.0, capacity=Capacity(1, 16.0))
    v = base.stages[0].variants[0]
    interim = Plan(stages=(stage_plan("s0", v.name, 9, 1.5, 8),))
    target = Plan(stages=(stage_plan("s0", v.name, 9, 0.5, 8),))
    r = 1.2 * 9 * v.throughput(8, 0.5)
    spikes = tuple(r if t % 60 < 5 else 0.6 * r for t in range(570))
    hist = spikes + (r,) * 30  # bursty before: a hedge well above 1
    st0 = TidalState(start=0.0, target=target)
    ctx = dataclasses.replace(base, now=600.0, rate_history=hist, forecast=None,
                              current=interim, state=st0)  # fmt: skip
    planner = Tidal()
    rates, _ = planner.rates(ctx, TidalState(), planner.horizon_s([v]))
    assert rates.hedge > 1.2 and abs(rates.fast - r) < 1e-6
    plan, _ = planner.plan(ctx)
    hedged = planner.solve(ctx, [v], r * rates.hedge, [9], wait_rate=r, fine=True)
    assert hedged is not None
    sp = plan.stages[0]
    assert sp.replicas == 9 and plan.total_cores < hedged.total_cores
    assert not planner.at_risk(ctx, plan, [v], r)


def test_a_two_change_scale_down_may_be_an_in_place_resize_on_the_fine_grid() -> None:
    base = synthetic_context(1, rps=40.0, capacity=Capacity(1, 16.0))
    v = base.stages[0].variants[0]
    cur = Plan(stages=(stage_plan("s0", v.name, 3, 1.0, 8),))
    lam = 72.0  # 3 x 0.75 cores (81.9 req/s at batch 8) carry it; 0.5-core grid: 5 x 0.5
    ctx = dataclasses.replace(base, now=300.0, rate_history=(lam,) * 300, forecast=None,
                              current=cur, state=TidalState(start=0.0))  # fmt: skip
    planner = Tidal()
    target = planner.solve(ctx, [v], lam, wait_rate=lam)
    assert target is not None and target.stages[0].replicas > 3  # replicas up, cores down
    plan = down.one_step(planner, ctx, [v], lam, lam, target)
    sp = plan.stages[0]
    assert sp.replicas == 3 and sp.cores == 0.75  # one change, in place
    assert plan.total_cores <= target.total_cores
