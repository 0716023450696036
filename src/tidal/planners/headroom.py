"""Headroom from measurements, not constants: a queueing wait against the slack, and a rate
hedge from the measured error of a rate predictor.

Queueing wait (`wait_ms`): one stage of `n` replicas, each running batches of `b` back to back
(p50 service `l50` ms per batch), fed by Poisson arrivals at `lam` req/s. Batches form at
``lam/b`` per second, with inter-batch times Erlang-`b` distributed (squared coefficient of
variation ``1/b``); service varies with the profile's p99/p50 ratio (squared coefficient
``((p99/p50 - 1)/2.326)**2``, a normal tail). The wait quantile is the M/M/n one (Erlang C:
``P(W > t) = C(n, a) exp(-(n mu - lam_b) t)``) scaled by the Allen-Cunneen factor
``(ca^2 + cs^2)/2``, the standard M/D/n-style correction (for b = 1 and deterministic
service it halves the M/M/n wait, as M/D/n's wait is about half of M/M/n's). Infinite at
utilisation >= 1.

Rate hedge (`peak_ratios`, `hedge`): how far the realized peak over a horizon `H` (the highest
`k`-second mean in the next `H` seconds) rose above what a predictor said when `H` began.
The replica plan covers the `coverage` quantile of that ratio. For the observed-level
predictor (the highest `k`-second mean of the last `window` seconds) the ratios are computed
from the rate history itself, so the hedge is measured on the arrivals being served: light,
smooth load gets a hedge near 1, bursty load a larger one. Without enough history the prior is
Poisson counting noise: ``1 + z * sqrt(1 / (level * k))`` (z = 2.33, the 99% normal quantile).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tidal.core.profile import VariantProfile
from tidal.planners.base import Capacity
from tidal.planners.common import (
    BATCHES,
    min_cores_per_replica,
    replicas_needed,
    stage_latency_ms,
)
from tidal.planners.dp import Option

Z99 = 2.326
"""The 99% quantile of the standard normal distribution."""


def erlang_c(n: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Probability of waiting in M/M/n with offered load `a` (Erlangs), elementwise; 1 where
    ``a >= n``. `n` >= 1 integers."""
    n = np.asarray(n, dtype=np.int64)
    a = np.asarray(a, dtype=np.float64)
    b = np.ones_like(a)
    out = np.ones_like(a)
    top = int(n.max()) if n.size else 0
    for k in range(1, top + 1):
        b = a * b / (k + a * b)
        at = n == k
        if at.any():
            rho = a[at] / k
            with np.errstate(divide="ignore", invalid="ignore"):
                c = b[at] / (1.0 - rho * (1.0 - b[at]))
            out[at] = np.where(rho < 1.0, np.clip(c, 0.0, 1.0), 1.0)
    return out


def wait_ms(
    n: np.ndarray,
    batch: np.ndarray,
    l50_ms: np.ndarray,
    lam: float,
    quantile: float = 0.99,
    p99_ratio: float = 1.0,
) -> np.ndarray:
    """The `quantile` of the queueing wait (ms) behind earlier batches, elementwise over
    candidate (replicas, batch, p50 batch latency); inf at utilisation >= 1, 0 at no load."""
    n = np.asarray(n, dtype=np.int64)
    b = np.asarray(batch, dtype=np.float64)
    s = np.asarray(l50_ms, dtype=np.float64) / 1000.0
    if lam <= 0:
        return np.zeros(n.shape)
    lam_b = lam / b
    a = lam_b * s
    rho = a / n
    pw = erlang_c(n, a)
    cs2 = ((max(p99_ratio, 1.0) - 1.0) / Z99) ** 2
    factor = (1.0 / b + cs2) / 2.0
    tail = 1.0 - quantile
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.log(np.maximum(pw, 1e-300) / tail) / (n / s - lam_b)
    out = np.where(pw > tail, t * factor * 1000.0, 0.0)
    return np.where(rho < 1.0 - 1e-12, np.maximum(out, 0.0), np.inf)


def measured_history(rates: Sequence[float], min_run: int = 10) -> np.ndarray:
    """`rates` without a leading run of >= `min_run` identical values: a synthetic warm start
    (a simulator's "already running at the first rate"), not measured arrivals (Poisson
    counts are never constant for 10 s), so it is no evidence about bursts."""
    hist = np.asarray(rates, dtype=np.float64)
    if len(hist) < min_run or np.any(hist[:min_run] != hist[0]):
        return hist
    diff = np.flatnonzero(hist != hist[0])
    return hist[int(diff[0]) :] if len(diff) else hist[:0]


def sliding_means(hist: np.ndarray, k: int) -> np.ndarray:
    """Means of every `k` consecutive seconds: ``m[i] = mean(hist[i:i+k])``."""
    if len(hist) < k:
        return np.asarray([float(hist.mean())]) if len(hist) else np.zeros(0)
    return np.convolve(hist, np.ones(k) / k, mode="valid")


def observed_level(hist: np.ndarray, k: int, window: int) -> float:
    """The observed-level predictor: the highest `k`-second mean in the last `window` s."""
    if not len(hist):
        return 0.0
    m = sliding_means(hist[-window:], k)
    return float(m.max())


def peak_ratios(hist: np.ndarray, k: int, window: int, horizon: int) -> np.ndarray:
    """For every past second t with a full look-back and look-ahead in `hist`: the realized
    peak (highest `k`-s mean within the next `horizon` s) over the observed level at t
    (highest `k`-s mean of the `window` s before t). Seconds with a zero level are skipped."""
    m = sliding_means(hist, k)  # m[i] covers seconds i .. i+k-1
    lo, hi = window, len(hist) - horizon  # t in [lo, hi]
    if hi < lo or len(hist) < k or window < k or horizon < k:
        return np.zeros(0)
    levels = sliding_window_view(m, window - k + 1).max(axis=1)  # level at t: [t - window]
    peaks = sliding_window_view(m, horizon - k + 1).max(axis=1)  # peak from t: [t]
    lv = levels[lo - window : hi - window + 1]
    pk = peaks[lo : hi + 1]
    ok = lv > 0
    return np.asarray(pk[ok] / lv[ok], dtype=np.float64)


PRIOR_WEIGHT = 20
"""Samples the prior counts for in `hedge` (fewer cannot place a 95% quantile)."""


def hedge(ratios: Sequence[float] | np.ndarray, coverage: float, prior: float) -> float:
    """The `coverage` quantile of measured ratios, shrunk towards `prior` as if the prior
    were `PRIOR_WEIGHT` samples: ``(n q + 20 prior) / (n + 20)``; `prior` with no samples,
    the measured quantile once there are many. (A short or flat history, e.g. a simulator's
    warm start, then cannot claim that no burst will come.)"""
    r = np.asarray(ratios, dtype=np.float64)
    r = r[np.isfinite(r)]
    if not len(r):
        return prior
    if math.isnan(prior):
        return float(np.quantile(r, coverage))
    n = len(r)
    return (n * float(np.quantile(r, coverage)) + PRIOR_WEIGHT * prior) / (n + PRIOR_WEIGHT)


def poisson_prior(level: float, k: int) -> float:
    """The hedge before measurements: the counting noise of a `k`-s mean at `level` req/s."""
    return 1.0 + Z99 * math.sqrt(1.0 / max(level * k, 1.0))


def queue_options(
    v: VariantProfile,
    grid: Sequence[float],
    capacity: Capacity,
    lam: float,
    mu: float,
    utilization: float,
    wait_quantile: float,
    peak_s: float = 0.0,
    replicas: int | None = None,
    cores: float | None = None,
) -> list[Option]:
    """One stage's candidates (n, c, b) for the DP, with their latency at the level `mu`:
    batch p99 + the time to fill the batch + the `wait_quantile` wait (`wait_ms`). Capacity
    carries the hedged peak `lam` below `utilization`, or, with `peak_s` > 0, only the level,
    and a `peak_s`-second peak above capacity C adds its backlog's drain delay,
    ``1000 * peak_s * (lam/C - 1)`` ms (the backlog (lam - C) peak_s drains at C). `replicas`
    fixes n, `cores` c; cores stay inside the profile's measured range."""
    lo = min_cores_per_replica(v)
    cand: list[tuple[int, int, float]] = []  # (n, b, c)
    for c in grid if cores is None else [cores]:
        if c < lo - 1e-9:
            continue
        slots = capacity.nodes * int(capacity.cores_per_node // c + 1e-9)
        for b in BATCHES:
            n0 = replicas_needed(v, b, c, (mu if peak_s > 0 else lam) / utilization)
            if replicas is not None:
                ns = [replicas] if n0 <= replicas <= slots else []
            else:  # more replicas than needed only shorten the wait
                n_peak = replicas_needed(v, b, c, lam / utilization)
                ns = list(range(n0, min(slots, 2 * max(n0, n_peak) + 2) + 1))
            cand += [(n, b, c) for n in ns]
    if not cand:
        return []
    wait = wait_ms(
        np.asarray([n for n, _, _ in cand]),
        np.asarray([b for _, b, _ in cand]),
        np.asarray([v.latency_ms(b, c) for _, b, c in cand]),
        mu,
        wait_quantile,
        v.fit.p99_ratio,
    )
    opts = []
    for (n, b, c), w in zip(cand, wait.tolist(), strict=True):
        lat = stage_latency_ms(v, b, c, mu) + w
        if peak_s > 0:
            carry = n * v.throughput(b, c) * utilization
            lat += 1000.0 * peak_s * max(0.0, lam / carry - 1.0)
        if math.isfinite(lat):
            opts.append(Option(lat, n * c, (n, c, b)))
    return opts


__all__ = [
    "erlang_c",
    "hedge",
    "measured_history",
    "observed_level",
    "peak_ratios",
    "poisson_prior",
    "queue_options",
    "sliding_means",
    "wait_ms",
]
