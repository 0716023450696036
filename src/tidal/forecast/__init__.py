"""Load predictors: last value, max of window, EWMA and a small LSTM (docs/forecast.md).

``tidal.forecast.create(name, setting)`` builds one; `setting` is "ipa" (12 ten-second maxima
-> max of the next 20 s) or "infadapter" (10 one-minute maxima -> max of the next minute).
"""

from __future__ import annotations

from typing import Any

from tidal.core.errors import TidalError
from tidal.forecast.predictors import (
    EWMA,
    SETTINGS,
    LastValue,
    Predictor,
    Setting,
    WindowMax,
    dataset,
    features,
    mape,
    rmse,
    setting,
)

PREDICTORS = ("last", "max", "ewma", "lstm")


def create(name: str, setting_name: str = "ipa", **kwargs: Any) -> Predictor:
    """The predictor `name` for `setting_name`; TidalError listing the valid names."""
    if name == "last":
        return LastValue(setting_name)
    if name == "max":
        return WindowMax(setting_name)
    if name == "ewma":
        return EWMA(setting_name, **kwargs)
    if name == "lstm":
        from tidal.forecast.lstm import LSTMPredictor

        return LSTMPredictor(setting_name, **kwargs)
    raise TidalError(f"unknown predictor {name!r}; valid predictors: {', '.join(PREDICTORS)}")


__all__ = [
    "EWMA",
    "PREDICTORS",
    "SETTINGS",
    "LastValue",
    "Predictor",
    "Setting",
    "WindowMax",
    "create",
    "dataset",
    "features",
    "mape",
    "rmse",
    "setting",
]
