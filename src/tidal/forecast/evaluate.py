"""Train/test split of the Twitter trace and side-by-side evaluation of the predictors.

Split (as IPA/InfAdapter): train on the first 14 days, test on the last 7 days, zero seconds
(gaps in the Archive Team dump) removed from each part as the authors did. Decision points
every `bucket_s` seconds of the test part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tidal.forecast.predictors import Predictor, Setting, dataset, mape, rmse

DAY = 86400


@dataclass(frozen=True)
class Score:
    """One predictor's errors on one setting."""

    predictor: str
    setting: str
    mape_pct: float
    rmse: float
    samples: int
    under_pct: float = 0.0  # predictions below the actual maximum (under-provisioning risk)


def load_twitter() -> np.ndarray:
    """The whole Twitter trace (per second) via tidal.workload (never copied)."""
    from tidal.workload.twitter import full_trace

    return np.asarray(full_trace(), dtype=np.float64)


def split(rates: np.ndarray, train_days: int = 14, test_days: int = 7) -> tuple[np.ndarray, ...]:
    """(train, test): first `train_days` and last `test_days` days, zeros removed."""
    r = np.asarray(rates, dtype=np.float64)
    train = r[: train_days * DAY]
    test = r[-test_days * DAY :]
    return train[train > 0], test[test > 0]


def evaluate(predictors: list[Predictor], test: np.ndarray, s: Setting) -> list[Score]:
    """MAPE and RMSE of each predictor on all decision points of `test`."""
    x, y = dataset(test, s, s.bucket_s)
    out = []
    for p in predictors:
        yhat = p.predict_features(x)
        under = float(100.0 * np.mean(yhat < y)) if len(y) else float("nan")
        out.append(Score(p.name, s.name, mape(y, yhat), rmse(y, yhat), len(y), under))
    return out
