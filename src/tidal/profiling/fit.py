"""Fit Sponge's latency model l(b,c) = gamma*b/c + delta*b + epsilon/c + eta (ms) to points.

Contract: `fit_sponge(points)` uses scipy's curve_fit (trust-region, coefficients bounded to be
non-negative: each term is a cost), on the p50s; it returns a LatencyFit with R^2, the worst
relative residual |pred - measured| / measured, and the mean p99/p50 ratio. At least 4 points
with 2 distinct batches and 2 distinct core counts are needed, else TidalError.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit, nnls

from tidal.core.errors import TidalError
from tidal.core.profile import LatencyFit, ProfilePoint


def sponge_model(
    x: np.ndarray, gamma: float, delta: float, epsilon: float, eta: float
) -> np.ndarray:
    """l(b, c) for x = (b, c) stacked as a 2 x n array."""
    b, c = x
    return gamma * b / c + delta * b + epsilon / c + eta


def fit_quality(fit: LatencyFit, points: Sequence[ProfilePoint]) -> tuple[float, float]:
    """(R^2, worst relative residual) of `fit` on the p50 of `points`."""
    y = np.array([p.p50_ms for p in points])
    pred = np.array([fit.latency_ms(p.batch, p.cores) for p in points])
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return r2, float(np.max(np.abs(pred - y) / y))


def fit_sponge(points: Sequence[ProfilePoint], *, relative: bool = False) -> LatencyFit:
    """Least-squares fit of the four coefficients (ms) to the points' p50.

    `relative=True` weights residuals by 1/measured (better for grids spanning 100x in latency);
    the default is plain least squares, as Sponge does.
    """
    if len(points) < 4:
        raise TidalError(f"need at least 4 profile points to fit, got {len(points)}")
    b = np.array([p.batch for p in points], dtype=float)
    c = np.array([p.cores for p in points], dtype=float)
    if len(set(b)) < 2 or len(set(c)) < 2:
        raise TidalError(
            f"need 2 distinct batches and 2 distinct core counts to fit, got batches "
            f"{sorted(set(b.tolist()))} and cores {sorted(set(c.tolist()))}"
        )
    y = np.array([p.p50_ms for p in points], dtype=float)
    sigma = y if relative else None
    # The model is linear in its coefficients: non-negative least squares gives the global
    # optimum as a starting point, and curve_fit (trust-region, bounded) refines it.
    w = 1.0 / y if relative else np.ones_like(y)
    design = np.vstack([b / c, b, 1.0 / c, np.ones_like(b)]).T * w[:, None]
    p0 = nnls(design, y * w)[0] + 1e-9
    with warnings.catch_warnings():
        # The covariance is not used (exactly determined fits cannot estimate it).
        warnings.simplefilter("ignore", OptimizeWarning)
        try:
            coef, _ = curve_fit(
                sponge_model, np.vstack([b, c]), y, p0=p0, sigma=sigma, bounds=(0.0, np.inf),
                maxfev=20000,
            )  # fmt: skip
        except (RuntimeError, ValueError) as e:
            raise TidalError(f"latency fit failed on {len(points)} points: {e}") from None
    ratios = [p.p99_ms / p.p50_ms for p in points if p.p50_ms > 0]
    fit = LatencyFit(
        gamma=float(coef[0]),
        delta=float(coef[1]),
        epsilon=float(coef[2]),
        eta=float(coef[3]),
        p99_ratio=max(1.0, float(np.mean(ratios))) if ratios else 1.0,
    )
    r2, worst = fit_quality(fit, points)
    return fit.model_copy(update={"r2": r2, "max_rel_residual": worst})


def fit_measured(points: Sequence[ProfilePoint], min_r2: float = 0.9) -> LatencyFit:
    """The fit used for profiles measured here: relative least squares (it bounds the error at
    small batches, where latencies are 50x smaller than at batch 16) unless its R^2 falls below
    `min_r2` while plain least squares reaches it; then plain least squares."""
    rel = fit_sponge(points, relative=True)
    if rel.r2 >= min_r2:
        return rel
    plain = fit_sponge(points)
    return plain if plain.r2 > rel.r2 else rel
