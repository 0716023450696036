"""Governed on random utilization sequences: every plan stays within the bounds, HPA never
grows faster than +max(4 pods, 100%) per decision, and never shrinks below a recommendation of
the last 300 s."""

from __future__ import annotations

import dataclasses
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from tidal.core.plan import Plan
from tidal.planners import Bounds, Governed, StageObservation, create
from tidal.planners.baselines.hpa import HPA
from tidal.planners.synthetic import synthetic_context


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    utils=st.lists(st.floats(0.0, 5.0), min_size=1, max_size=40),
    max_replicas=st.integers(1, 40),
)
def test_hpa_governed_respects_bounds_limits_and_window(utils, max_replicas) -> None:
    hpa = create("hpa")
    assert isinstance(hpa, HPA)
    g = Governed(hpa, bounds=Bounds(min_replicas=1, max_replicas=max_replicas))
    base = synthetic_context(1)
    plan: Plan | None = None
    state = None
    recs: list[tuple[float, int]] = []
    for k, u in enumerate(utils):
        t = 15.0 * k
        ctx = dataclasses.replace(
            base,
            now=t,
            current=plan,
            state=state,
            observations=(StageObservation("s0", cpu_utilization=u),),
        )
        before = None if plan is None else plan.stages[0].replicas
        plan, state = g.plan(ctx)
        r = plan.stages[0].replicas
        assert 1 <= r <= max_replicas
        if before is not None:
            raw = min(max(hpa.desired(before, u), 1), max_replicas)
            recs.append((t, raw))
            assert r <= max(before + 4, math.ceil(before * 2))
            if r < before:  # a scale-down never goes below any recommendation of the window
                assert r >= max(x for s, x in recs if t - s < 300 or s == t)
