"""The HiGHS solver layer: optimum, infeasibility without exceptions, explain, and the DP."""

from __future__ import annotations

import pytest

from tidal.planners.dp import Option, min_cost
from tidal.planners.solver import Infeasible, Model


def test_knapsack_optimum() -> None:
    m = Model("knap", sense="max")
    xs = [m.var(f"x{i}", binary=True, obj=v) for i, v in enumerate([6, 10, 12])]
    m.constrain({x: w for x, w in zip(xs, [1, 2, 3], strict=True)}, ub=5, name="weight")
    sol = m.solve().require()
    assert sol.objective == pytest.approx(22)
    assert sol.optimal
    assert [sol.on(x) for x in xs] == [False, True, True]


def test_infeasible_is_reported_not_raised_until_required() -> None:
    m = Model("bad")
    x = m.var("x", lb=0, ub=1, integer=True)
    m.constrain({x: 1.0}, lb=2.0, name="x>=2")
    sol = m.solve()
    assert not sol.ok
    with pytest.raises(Infeasible, match="model 'bad' has no solution"):
        sol.require()
    assert "x>=2: 2 <= +1*x <= inf" in m.explain()


def test_dp_picks_cheapest_within_budget() -> None:
    stages = [
        [Option(10, 5, "a-fast"), Option(30, 1, "a-slow")],
        [Option(10, 4, "b-fast"), Option(25, 2, "b-slow")],
    ]
    pick = min_cost(stages, 45, 1.0)
    assert pick is not None
    # slow+slow = 55 ms is over; slow+fast = 40 ms costs 5 < fast+slow (35 ms, 7)
    assert [o.payload for o in pick] == ["a-slow", "b-fast"]
    assert min_cost(stages, 19, 1.0) is None
