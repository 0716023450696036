"""Load predictors over bucketed history, and the two settings of the papers.

A `Setting` turns a per-second rate history into features: the maxima of the last
`n_buckets` buckets of `bucket_s` seconds (oldest first). The target is the maximum rate over
the next `horizon_s` seconds.
- IPA: twelve 10-s maxima (the last 120 s) -> max of the next 20 s; interval 10 s.
- InfAdapter: ten 1-min maxima -> max of the next minute; interval 30 s (the planner adds its
  10% margin itself).

Contract: `Predictor.predict(history)` takes req/s per second, oldest first, and returns a
non-negative rate. With less history than one full window it returns the maximum of what
there is (IPA's fallback: max-of-window until enough history); with none it returns 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tidal.core.errors import TidalError


@dataclass(frozen=True)
class Setting:
    """Feature/target layout of one paper's predictor."""

    name: str
    bucket_s: int
    n_buckets: int
    horizon_s: int

    @property
    def window_s(self) -> int:
        return self.bucket_s * self.n_buckets


SETTINGS: dict[str, Setting] = {
    "ipa": Setting("ipa", bucket_s=10, n_buckets=12, horizon_s=20),
    "infadapter": Setting("infadapter", bucket_s=60, n_buckets=10, horizon_s=60),
}


def setting(name: str) -> Setting:
    """The setting `name`; TidalError listing the valid ones."""
    try:
        return SETTINGS[name]
    except KeyError:
        raise TidalError(f"unknown forecast setting {name!r}; valid: {sorted(SETTINGS)}") from None


def features(history: np.ndarray, s: Setting) -> np.ndarray | None:
    """Bucket maxima (n_buckets,) of the last window of `history`, or None if too short."""
    h = np.asarray(history, dtype=np.float64)
    if len(h) < s.window_s:
        return None
    return h[-s.window_s :].reshape(s.n_buckets, s.bucket_s).max(axis=1)


def dataset(rates: np.ndarray, s: Setting, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """All (features, target) pairs of `rates` at decision points every `stride` seconds:
    X (N, n_buckets) bucket maxima of the past window, y (N,) max of the next horizon."""
    r = np.asarray(rates, dtype=np.float64)
    n_full = (len(r) // s.bucket_s) * s.bucket_s
    buckets = r[:n_full].reshape(-1, s.bucket_s).max(axis=1)
    if stride % s.bucket_s:
        raise ValueError(f"stride {stride} must be a multiple of bucket {s.bucket_s}")
    step = stride // s.bucket_s
    ends = np.arange(s.n_buckets, len(buckets), step)  # decision at second ends*bucket_s
    ends = ends[ends * s.bucket_s + s.horizon_s <= len(r)]
    idx = ends[:, None] - s.n_buckets + np.arange(s.n_buckets)[None, :]
    x = buckets[idx]
    t0 = ends * s.bucket_s
    fut = np.lib.stride_tricks.sliding_window_view(r, s.horizon_s)
    y = fut[t0].max(axis=1)
    return x, y


class Predictor(Protocol):
    """A load predictor for one setting."""

    name: str
    setting: Setting

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        """Predictions (N,) for feature rows x (N, n_buckets)."""
        ...

    def predict(self, history: np.ndarray) -> float:
        """Predicted max rate over the horizon from a per-second history."""
        ...


class _Base:
    name = "base"

    def __init__(self, s: Setting | str = "ipa") -> None:
        self.setting = setting(s) if isinstance(s, str) else s

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, history: np.ndarray) -> float:
        h = np.asarray(history, dtype=np.float64)
        if len(h) == 0:
            return 0.0
        f = features(h, self.setting)
        if f is None:
            return float(max(0.0, h.max()))
        return float(max(0.0, self.predict_features(f[None, :])[0]))


class LastValue(_Base):
    """The maximum of the most recent bucket."""

    name = "last"

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)[:, -1].astype(np.float64)


class WindowMax(_Base):
    """The maximum over the whole input window."""

    name = "max"

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x).max(axis=1).astype(np.float64)


class EWMA(_Base):
    """Exponentially weighted moving average of the bucket maxima (weight `alpha` on the
    newest)."""

    name = "ewma"

    def __init__(self, s: Setting | str = "ipa", alpha: float = 0.5) -> None:
        super().__init__(s)
        if not 0 < alpha <= 1:
            raise TidalError(f"ewma: alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        acc = x[:, 0].copy()
        for j in range(1, x.shape[1]):
            acc = self.alpha * x[:, j] + (1 - self.alpha) * acc
        return acc


def mape(y: np.ndarray, yhat: np.ndarray) -> float:
    """Mean absolute percentage error (%) over targets > 0."""
    y, yhat = np.asarray(y, dtype=np.float64), np.asarray(yhat, dtype=np.float64)
    m = y > 0
    return float(100.0 * np.mean(np.abs(yhat[m] - y[m]) / y[m])) if m.any() else float("nan")


def rmse(y: np.ndarray, yhat: np.ndarray) -> float:
    """Root mean squared error (req/s)."""
    d = np.asarray(yhat, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    return float(np.sqrt(np.mean(d * d))) if len(d) else float("nan")
