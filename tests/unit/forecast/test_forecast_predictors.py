"""Predictors, the windowed dataset, metrics, the committed LSTM weights and a tiny training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tidal.core.errors import TidalError
from tidal.core.shared import shared_path
from tidal.forecast import SETTINGS, create, dataset, features, mape, rmse
from tidal.forecast.evaluate import evaluate, split
from tidal.forecast.lstm import LSTMPredictor, save, train


def test_dataset_features_and_targets_by_hand() -> None:
    s = SETTINGS["ipa"]
    rates = np.arange(200, dtype=float)  # increasing: bucket max = last second of the bucket
    x, y = dataset(rates, s, 10)
    assert x.shape[1] == 12
    # first decision at t=120: buckets [0..9] .. [110..119], target max(rates[120:140])
    assert list(x[0]) == [9.0 + 10 * k for k in range(12)]
    assert y[0] == 139.0
    assert features(rates[:120], s) is not None and features(rates[:119], s) is None


def test_simple_predictors() -> None:
    x = np.array([[1.0, 5.0, 2.0, 4.0]])
    assert create("last").predict_features(x)[0] == 4.0
    assert create("max").predict_features(x)[0] == 5.0
    e = create("ewma", alpha=0.5).predict_features(x)[0]
    assert e == pytest.approx(0.5 * 4 + 0.25 * 2 + 0.125 * 5 + 0.125 * 1)


def test_short_history_falls_back_to_max_of_window() -> None:
    p = create("lstm", "ipa")
    assert p.predict(np.array([3.0, 7.0, 2.0])) == 7.0
    assert p.predict(np.array([])) == 0.0


def test_metrics() -> None:
    y = np.array([100.0, 0.0, 50.0])
    yhat = np.array([110.0, 5.0, 40.0])
    assert mape(y, yhat) == pytest.approx(15.0)  # zero targets excluded
    assert rmse(y, yhat) == pytest.approx(np.sqrt((100 + 25 + 100) / 3))


def test_unknown_names() -> None:
    with pytest.raises(TidalError, match="unknown predictor 'arima'; valid predictors: last"):
        create("arima")
    with pytest.raises(TidalError, match="unknown forecast setting 'x'"):
        create("last", "x")


@pytest.mark.parametrize("setting", ["ipa", "infadapter"])
def test_committed_lstm_tracks_a_level_shift(setting: str) -> None:
    """The trained LSTM follows the level of its input: a flat history at 50 or 200 req/s
    predicts within 25% of it (a model that ignores its input cannot pass both)."""
    p = LSTMPredictor(setting)
    s = SETTINGS[setting]
    for level in (50.0, 200.0):
        pred = p.predict(np.full(s.window_s, level))
        assert abs(pred - level) / level < 0.25, (level, pred)
    assert p.meta["setting"] == setting and p.meta["hidden"] == 25


def test_split_removes_zeros_and_keeps_days() -> None:
    r = np.ones(22 * 86400)
    r[5] = 0
    train_, test_ = split(r)
    assert len(train_) == 14 * 86400 - 1 and len(test_) == 7 * 86400


def test_tiny_training_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rates = 50 + 20 * np.sin(np.arange(6000) / 300.0) + rng.normal(0, 2, 6000)
    s = SETTINGS["ipa"]
    state, meta = train(rates, s, epochs=1, stride=10)
    save(tmp_path / "w.npz", state, meta)
    p = LSTMPredictor("ipa", weights=tmp_path / "w.npz")
    (score,) = evaluate([p], rates[-2000:], s)
    assert score.samples > 0 and np.isfinite(score.mape_pct)
    with pytest.raises(TidalError, match="are for setting 'ipa', not 'infadapter'"):
        LSTMPredictor("infadapter", weights=tmp_path / "w.npz")


def _num(v: object) -> float:
    assert isinstance(v, int | float), v
    return float(v)


@pytest.mark.shared
def test_eval_on_twitter_last_week_lstm_beats_max_and_last() -> None:
    from tidal.cli.plan import _eval

    assert shared_path("traces", "twitter_2021-08_per_second.txt") is not None
    rows = {r["predictor"]: r for r in _eval(["infadapter"], None)}
    lstm, last, max_ = (
        {k: _num(rows[n][k]) for k in ("samples", "rmse", "mape_pct")}
        for n in ("lstm", "last", "max")
    )
    assert lstm["samples"] == max_["samples"] > 9000
    assert lstm["rmse"] < last["rmse"] < max_["rmse"]
    assert lstm["mape_pct"] < last["mape_pct"]
