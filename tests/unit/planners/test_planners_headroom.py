"""`tidal.planners.headroom`: the queueing wait against the slack and the measured rate hedge,
and that `tidal` sizes light, smooth load leaner than a fixed 0.8 utilisation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tidal.planners import Capacity
from tidal.planners.headroom import (
    erlang_c,
    hedge,
    measured_history,
    peak_ratios,
    poisson_prior,
    wait_ms,
)
from tidal.planners.synthetic import synthetic_context
from tidal.planners.themis import Themis
from tidal.planners.tidal import Tidal, TidalState


def test_erlang_c_matches_closed_forms() -> None:
    # M/M/1: P(wait) = rho; M/M/2 at a = 1: 1/3
    got = erlang_c(np.array([1, 2, 3]), np.array([0.5, 1.0, 3.0]))
    assert np.allclose(got[:2], [0.5, 1.0 / 3.0])
    assert got[2] == 1.0  # a >= n: everyone waits


def test_wait_falls_with_replicas_and_is_infinite_at_full_utilisation() -> None:
    n = np.array([5, 6, 8, 12, 40])
    w = wait_ms(n, np.full(5, 16), np.full(5, 400.0), 200.0)  # 40 req/s per replica at 400 ms
    assert math.isinf(w[0])  # 5 x 40 = 200: utilisation 1
    assert w[1] > w[2] > 0.0
    assert w[3] == w[4] == 0.0  # Erlang C below 1 - quantile: no tail wait
    # the M/D/n correction: deterministic service, batch 1, halves the M/M/n quantile
    mm = math.log(erlang_c(np.array([2]), np.array([1.5]))[0] / 0.01) / (2 / 0.1 - 15) * 1000
    assert math.isclose(wait_ms(np.array([2]), np.array([1]), np.array([100.0]), 15.0)[0],
                        mm / 2, rel_tol=1e-9)  # fmt: skip


def test_peak_ratios_measure_how_far_the_next_peak_rose() -> None:
    hist = np.array([10.0] * 40 + [20.0] * 20)
    r = peak_ratios(hist, k=1, window=10, horizon=5)
    assert r.min() == 1.0 and r.max() == 2.0  # a doubling seen 5 s ahead
    assert len(peak_ratios(hist[:12], 1, 10, 5)) == 0  # no full look-ahead yet


def test_hedge_shrinks_towards_the_prior_and_ignores_a_flat_warm_start() -> None:
    assert hedge([], 0.95, 1.25) == 1.25
    assert math.isclose(hedge([1.0] * 20, 0.95, 1.5), 1.25)  # 20 samples weigh as the prior
    assert hedge([1.1] * 2000, 0.95, 2.0) < 1.12  # many samples: the measured quantile
    assert len(measured_history([50.0] * 60)) == 0
    assert list(measured_history([50.0] * 60 + [48.0, 53.0])) == [48.0, 53.0]
    assert poisson_prior(100.0, 3) > poisson_prior(1000.0, 3) > 1.0


def test_tidal_sizes_light_smooth_load_leaner_than_a_fixed_headroom() -> None:
    rng = np.random.default_rng(0)
    rates = [float(x) for x in rng.poisson(300.0, 900)]
    base = synthetic_context(1, rps=300.0, capacity=Capacity(1, 64.0))
    ctx = dataclasses.replace(base, rate_history=tuple(rates), forecast=None)
    t = Tidal()
    r, _ = t.rates(ctx, TidalState(), 10)
    # ten minutes of smooth Poisson arrivals: the measured hedge is a few percent
    assert 1.0 <= r.hedge < 1.1
    chosen = [base.stages[0].variants[0]]
    lean = t.solve(ctx, chosen, r.slow)
    fixed = Themis(utilization=0.8).solve(
        dataclasses.replace(ctx, forecast=max(rates[-30:])), chosen
    )
    assert lean is not None and fixed is not None
    assert lean.total_cores < fixed.total_cores  # than a fixed 0.8 utilisation
    assert t.at_risk(ctx, lean, chosen, r.fast) is False  # and it carries the load
    # a burstier history (the same mean, level steps of +-40% every 10 s): a larger hedge
    steps = np.repeat(rng.choice([180.0, 300.0, 420.0], 90), 10)
    bursty = tuple(float(x) for x in rng.poisson(steps))
    rb, _ = t.rates(dataclasses.replace(ctx, rate_history=bursty), TidalState(), 10)
    assert rb.hedge > r.hedge + 0.1
