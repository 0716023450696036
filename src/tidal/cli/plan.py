"""CLI of the plan area: `tidal plan`, `tidal forecast train|eval`, `tidal bench planners`,
`tidal bench decisions`."""

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
                    "under_pct": round(sc.under_pct, 2),
                }
            )
    return rows


def _print_rows(rows: list[dict[str, object]], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    t = Table(title="Twitter trace, last 7 days (zeros removed)")
    for col in ("setting", "predictor", "MAPE %", "RMSE req/s", "under-predicted %", "samples"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            str(r["setting"]),
            str(r["predictor"]),
            f"{r['mape_pct']:.2f}",
            f"{r['rmse']:.2f}",
            f"{r['under_pct']:.1f}",
            str(r["samples"]),
        )
    Console().print(t)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for it in items:
        key, sep, value = it.partition("=")
        if not sep or not key:
            raise TidalError(f"{what} must look like KEY=VALUE, got {it!r}")
        out[key] = value
    return out


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add this area's commands to `app` and its benchmarks to `bench`."""

    @app.command("plan")
    def plan_cmd(
        policy: str = typer.Option(..., help="Planner name (see docs/planners.md)."),
        pipeline: Path = typer.Option(
            None,
            help="Pipeline YAML (examples/pipelines/*.yaml); with --model-repository: a "
            "repository model or pipeline name.",
        ),
        rps: float = typer.Option(..., help="Arrival rate to plan for (req/s, >= 0)."),
        slo_ms: float = typer.Option(..., "--slo-ms", help="End-to-end SLO (ms, > 0)."),
        profile: str | None = typer.Option(
            None,
            help="ProfileSet JSON; 'sponge' / 'infadapter' (published profiles, imported); "
            "'synthetic' (labelled synthetic profiles); default: the reference profile "
            "(tidal.profiling.load_reference()).",
        ),
        nodes: int = typer.Option(1, help="Nodes in the cluster."),
        cores_per_node: float = typer.Option(
            0.0, help="Cores per node (default: this machine's CPU count)."
        ),
        variant: list[str] = typer.Option(
            [], help="STAGE=VARIANT: fix a stage's variant (fixed-variant policies)."
        ),
        option: list[str] = typer.Option(
            [], help="KEY=VALUE planner option (YAML value), e.g. accuracy=sum."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
        model_repository: str | None = typer.Option(
            None,
            "--model-repository",
            help="Plan a repository model: its versions are the variants, with their cached "
            "profiles (docs/models.md).",
        ),
    ) -> None:
        """One planning decision for a steady rate: variants, replicas, cores, batch."""
        import os
        import tempfile

        if model_repository is not None:
            from tidal.cli.serve_repo import repository_inputs

            tmp = tempfile.mkdtemp(prefix="tidal-plan-")
            pp, profile, _ = repository_inputs(
                model_repository, str(pipeline) if pipeline else None, tmp
            )
            pipeline = Path(pp)
        elif pipeline is None:
            raise TidalError("--pipeline is required (or --model-repository DIR)")

        import yaml

        from tidal.planners import Capacity
        from tidal.planners.oneshot import decide

        if nodes < 1:
            raise TidalError(f"--nodes must be >= 1, got {nodes}")
        cpn = cores_per_node or float(os.cpu_count() or 1)
        if cpn <= 0:
            raise TidalError(f"--cores-per-node must be > 0, got {cores_per_node}")
        opts = {k: yaml.safe_load(v) for k, v in _pairs(option, "--option").items()}
        from tidal.core.profile import ProfileSet

        profiles: str | ProfileSet | None = profile
        if profile is None or profile in ("sponge", "infadapter"):
            from tidal.profiling import load_imported, load_reference

            profiles = load_reference() if profile is None else load_imported(profile)
        out = decide(
            policy,
            pipeline,
            rps,
            slo_ms,
            profile=profiles,
            capacity=Capacity(nodes, cpn),
            options=opts,
            variants=_pairs(variant, "--variant") or None,
        )
        if as_json:
            typer.echo(json.dumps(out, indent=2))
            return
        status = "feasible" if out["feasible"] else f"INFEASIBLE: {out['reason']}"
        typer.echo(f"{policy}: {status} (decided in {out['decision_ms']:.1f} ms)")
        for st in out["stages"]:
            vs = ", ".join(f"{v['name']}:{v['weight']:.2f}" for v in st["variants"])
            typer.echo(
                f"  {st['stage']}: [{vs}] replicas={st['replicas']} cores={st['cores']:g} "
                f"batch={st['batch']}"
            )
        p = out["predicted"]
        typer.echo(
            f"  predicted: latency {p['latency_ms']:.1f} ms, {p['cores']:g} cores, "
            f"accuracy {p['accuracy']:.4f}"
        )

    @bench.command("planners")
    def bench_planners(
        repeat: int = typer.Option(20, min=1, help="Decisions per (policy, pipeline)."),
        rps: float = typer.Option(50.0, min=0.0),
        policy: list[str] = typer.Option([], help="Only these policies (default: all)."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Median and p95 decision time per policy for 1-, 3- and 10-stage pipelines (5
        variants each, synthetic profiles). Goals: p95 <= 50 ms at 3 stages, <= 1 s at 10."""
        from tidal.bench.planners import bench as run_bench
        from tidal.planners import available

        for p in policy:
            if p not in available():
                raise TidalError(f"unknown policy {p!r}; valid policies: {', '.join(available())}")
        res = run_bench(repeat=repeat, rps=rps, policies=policy or None)
        if as_json:
            typer.echo(json.dumps(res, indent=2))
            return
        t = Table(
            title=f"decision time (ms): median / p95, {res['variants_per_stage']} variants/stage; "
            f"load average {res['load_average_start'][0]} -> {res['load_average_end'][0]}"
        )
        t.add_column("policy")
        for s in ("1", "3", "10"):
            t.add_column(f"{s} stage(s)")
        for name, row in res["median_ms"].items():
            q, c = res["p95_ms"][name], res["cpu_p95_ms"][name]
            t.add_row(
                name, *(f"{row[s]:.2f} / {q[s]:.2f} (cpu p95 {c[s]:.2f})" for s in ("1", "3", "10"))
            )
        Console().print(t)

    @bench.command("decisions")
    def bench_decisions(
        out: Path = typer.Option(
            Path("results/decisions.jsonl"), help="JSON-lines file of rows (appended, resumable)."
        ),
        group: list[str] = typer.Option(
            [],
            help="paper, tune (days 14-17), holdout (days 18-21), tune2 (days 1-13, opt-in); "
            "default paper, tune and holdout.",
        ),
        level: list[str] = typer.Option([], help="Load levels: 0.3, 0.7, 1.1, raw (default all)."),
        policy: list[str] = typer.Option([], help="Policies (default: tidal and the peers)."),
        limit: int | None = typer.Option(None, min=1, help="At most this many windows per run."),
        report_only: bool = typer.Option(False, help="Only print the scoreboard of --out."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Every policy on every window and load level: violations, core-seconds, accuracy
        over sent requests, plan changes per hour, infeasible decisions; a Pareto verdict."""
        import os

        from tidal.bench import decisions as dec
        from tidal.planners import available

        for p in policy:
            if p not in available():
                raise TidalError(f"unknown policy {p!r}; valid policies: {', '.join(available())}")
        bad = [lv for lv in level if lv not in dec.LEVELS]
        if bad:
            raise TidalError(f"unknown level {bad[0]!r}; valid: {', '.join(dec.LEVELS)}")
        start = os.getloadavg()
        if report_only:
            rows = dec.read_rows(out)
        else:
            rows = dec.run(
                out,
                groups=group or ("paper", "tune", "holdout"),
                levels=level or dec.LEVELS,
                policies=policy or dec.POLICIES,
                limit=limit,
                progress=None if as_json else typer.echo,
            )
        if as_json:
            typer.echo(json.dumps({"rows": rows, "verdict": dec.verdict(rows)}, indent=2))
            return
        typer.echo(dec.table(rows))
        typer.echo(dec.summary(rows))
        typer.echo(f"load average {start[0]:.1f} -> {os.getloadavg()[0]:.1f}")

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
