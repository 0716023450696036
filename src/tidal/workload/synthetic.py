"""Synthetic load shapes (step, spike, ramp, diurnal) for tests and machines without ../shared.

Each returns requests per second (float64) for `duration_s` seconds. With a seed, each second's
rate gets Poisson noise around the shape; without one the shape is exact.
"""

from __future__ import annotations

import numpy as np

from tidal.core.errors import TidalError

SHAPES = ("step", "spike", "ramp", "diurnal", "constant")


def synthetic_rates(
    shape: str,
    duration_s: int = 600,
    low: float = 20.0,
    high: float = 100.0,
    seed: int | None = 0,
) -> np.ndarray:
    """Rates per second of `shape`:

    - step: `low` for the first half, then `high`;
    - spike: `low`, with `high` during the middle 10% of the run;
    - ramp: linear from `low` to `high`;
    - diurnal: a sine between `low` and `high` with one period over the run;
    - constant: `high` throughout.
    """
    if duration_s < 1:
        raise TidalError(f"synthetic duration must be >= 1 s, got {duration_s}")
    if low < 0 or high < 0:
        raise TidalError(f"synthetic rates must be >= 0, got low={low} high={high}")
    t = np.arange(duration_s, dtype=np.float64)
    if shape == "step":
        r = np.where(t < duration_s / 2, low, high)
    elif shape == "spike":
        a, b = int(0.45 * duration_s), int(0.55 * duration_s)
        r = np.where((t >= a) & (t < b), high, low)
    elif shape == "ramp":
        r = low + (high - low) * t / max(1, duration_s - 1)
    elif shape == "diurnal":
        r = low + (high - low) * 0.5 * (1 - np.cos(2 * np.pi * t / duration_s))
    elif shape == "constant":
        r = np.full(duration_s, high)
    else:
        raise TidalError(f"unknown synthetic shape {shape!r}; valid: {', '.join(SHAPES)}")
    r = np.asarray(r, dtype=np.float64)
    if seed is None:
        return r
    rng = np.random.default_rng(seed)
    return rng.poisson(r).astype(np.float64)
