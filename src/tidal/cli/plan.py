"""CLI of the plan area: `tidal plan`, `tidal forecast train|eval`, `tidal bench planners`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tidal.core.errors import TidalError

_SETTINGS_HELP = "ipa, infadapter or all"


def _settings(name: str) -> list[str]:
    from tidal.forecast import SETTINGS

    if name == "all":
        return list(SETTINGS)
    if name not in SETTINGS:
        raise TidalError(f"unknown forecast setting {name!r}; valid: {sorted(SETTINGS)} or all")
    return [name]


def _eval(settings: list[str], weights_dir: Path | None) -> list[dict[str, object]]:
    from tidal.forecast import create, setting
    from tidal.forecast.evaluate import evaluate, load_twitter, split
    from tidal.forecast.lstm import LSTMPredictor

    _, test = split(load_twitter())
    rows: list[dict[str, object]] = []
    for name in settings:
        s = setting(name)
        w = None if weights_dir is None else weights_dir / f"lstm_{name}.npz"
        preds = [create("last", name), create("max", name), create("ewma", name)]
        preds.append(LSTMPredictor(name, weights=w))
        for sc in evaluate(preds, test, s):
            rows.append(
                {
                    "setting": sc.setting,
                    "predictor": sc.predictor,
                    "mape_pct": round(sc.mape_pct, 3),
                    "rmse": round(sc.rmse, 3),
                    "samples": sc.samples,
                }
            )
    return rows


def _print_rows(rows: list[dict[str, object]], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    t = Table(title="Twitter trace, last 7 days (zeros removed)")
    for col in ("setting", "predictor", "MAPE %", "RMSE req/s", "samples"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            str(r["setting"]),
            str(r["predictor"]),
            f"{r['mape_pct']:.2f}",
            f"{r['rmse']:.2f}",
            str(r["samples"]),
        )
    Console().print(t)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add this area's commands to `app` and its benchmarks to `bench`."""
    forecast = typer.Typer(help="Load predictors: train the LSTM, compare all predictors.")
    app.add_typer(forecast, name="forecast")

    @forecast.command("train")
    def forecast_train(
        setting_name: str = typer.Option("all", "--setting", help=_SETTINGS_HELP),
        epochs: int = typer.Option(12, min=1, help="Training epochs (bounded by --max-seconds)."),
        stride: int = typer.Option(10, min=1, help="Seconds between training samples."),
        max_seconds: float = typer.Option(240.0, min=1, help="Training time budget per setting."),
        out: Path | None = typer.Option(None, help="Weights directory (default: package data)."),
        seed: int = typer.Option(0),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Train the LSTM on the first 14 days of the Twitter trace, then evaluate all
        predictors on the last 7 (reproduces the committed weights with the defaults)."""
        from tidal.forecast import setting
        from tidal.forecast.evaluate import load_twitter, split
        from tidal.forecast.lstm import WEIGHTS_DIR, save, train

        names = _settings(setting_name)
        train_rates, _ = split(load_twitter())
        wdir = out or WEIGHTS_DIR
        for name in names:
            s = setting(name)
            if stride > s.bucket_s or s.bucket_s % stride:
                raise TidalError(f"--stride {stride} must divide the {name} bucket {s.bucket_s} s")
            state, meta = train(
                train_rates, s, epochs=epochs, stride=stride, seed=seed, max_seconds=max_seconds
            )
            save(wdir / f"lstm_{name}.npz", state, meta)
            if not as_json:
                typer.echo(f"trained {name}: {meta} -> {wdir / f'lstm_{name}.npz'}")
        _print_rows(_eval(names, wdir), as_json)

    @forecast.command("eval")
    def forecast_eval(
        setting_name: str = typer.Option("all", "--setting", help=_SETTINGS_HELP),
        weights: Path | None = typer.Option(None, help="Weights directory (default: package)."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """MAPE and RMSE of last, max, ewma and lstm side by side on the last 7 days."""
        _print_rows(_eval(_settings(setting_name), weights), as_json)
