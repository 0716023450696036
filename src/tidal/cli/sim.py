"""CLI of the sim area: `tidal simulate`, `tidal reproduce`, `tidal bench sim`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tidal.core.errors import TidalError


def _table(results: list, title: str) -> Table:
    t = Table(title=title)
    for col in (
        "policy", "requests", "viol %", "late", "refused", "expired", "unfin.", "p50 ms",
        "p99 ms", "core-s", "mean cores", "accuracy", "starts", "resizes", "decision ms",
    ):  # fmt: skip
        t.add_column(col, justify="right" if col != "policy" else "left")

    def f(x: float, nd: int = 1) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"

    for r in results:
        c = r.counts
        t.add_row(
            r.policy,
            str(r.requests),
            f(100 * r.slo_violation_rate, 2),
            str(c["late"]),
            str(c["refused"]),
            str(c["expired"]),
            str(c["unfinished"]),
            f(r.p50_ms),
            f(r.p99_ms),
            f(r.core_seconds, 0),
            f(r.mean_cores, 2),
            f(r.mean_accuracy, 4),
            str(r.replica_starts),
            str(r.resizes + r.recreates),
            f(r.decision_ms_mean, 2),
        )
    return t


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add this area's commands to `app` and its benchmarks to `bench`."""

    @app.command()
    def simulate(
        trace: str = typer.Option("twitter:bursty", help="twitter:NAME|START-END, synthetic:…"),
        policies: str = typer.Option("static,hpa", help="Comma-separated policy names."),
        pipeline: str = typer.Option(
            None,
            help="Pipeline YAML or one-stage/two-stage/three-stage (default: one stage "
            "of every variant of the profile; one-stage for the reference profile).",
        ),
        profile: str = typer.Option("reference", help="reference | sponge | infadapter | PATH"),
        slo_ms: float = typer.Option(750.0, help="End-to-end SLO (ms)."),
        nodes: int = typer.Option(1, help="Nodes in the simulated cluster."),
        cores_per_node: float = typer.Option(16.0, help="Cores per node."),
        damping: int = typer.Option(None, help="Divide rates (default: the window's own)."),
        compress: int = typer.Option(1, help="Play the trace k times faster."),
        duration: int = typer.Option(None, help="Only the first N seconds of the trace."),
        seed: int = typer.Option(0, help="Seed of arrivals, SLOs and noise."),
        dynamic_slo: bool = typer.Option(False, help="Per-request budgets (LTE log, Sponge)."),
        admission: bool = typer.Option(True, help="Admission control (else serve late)."),
        hold_fraction: float = typer.Option(
            0.0, help="Batcher hold window as a fraction of l(1,c) (live gateway: 0.1)."
        ),
        mode: str = typer.Option("auto", help="auto | reference | fast"),
        forecast: str = typer.Option("paper", help="paper | none | last | max | ewma | lstm"),
        json_out: bool = typer.Option(False, "--json", help="Print JSON results."),
        plot: Path = typer.Option(None, help="Write the time-series figure (PNG)."),
        out: Path = typer.Option(None, help="Directory for per-request CSV outcomes."),
        model_repository: str | None = typer.Option(
            None,
            "--model-repository",
            help="Simulate a repository model (--pipeline names it): its versions with their "
            "cached profiles.",
        ),
    ) -> None:
        """Replay a trace through the simulator under each policy and compare them."""
        if model_repository is not None:
            import tempfile

            from tidal.cli.serve_repo import repository_inputs

            pipeline, profile, _ = repository_inputs(
                model_repository, pipeline, tempfile.mkdtemp(prefix="tidal-sim-")
            )
        from pydantic import ValidationError

        from tidal.sim.config import SimConfig, sim_scheduler
        from tidal.sim.run import compare, load_pipeline, load_profiles
        from tidal.workload import load_trace

        try:
            cfg = SimConfig(
                nodes=nodes,
                cores_per_node=cores_per_node,
                slo_ms=slo_ms,
                seed=seed,
                dynamic_slo=dynamic_slo,
                scheduler=sim_scheduler(admission=admission, hold_fraction=hold_fraction),
                mode=mode,  # type: ignore[arg-type]
            )
        except ValidationError as e:
            err = e.errors()[0]
            raise TidalError(
                f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']} (got {err.get('input')!r})"
            ) from None
        profs = load_profiles(profile)
        pipe = load_pipeline(pipeline if pipeline or profile != "reference" else "one-stage", profs)
        rates = load_trace(trace, damping=damping, compress=compress, seed=seed)
        if duration is not None:
            if duration < 1:
                raise TidalError(f"--duration must be >= 1 s, got {duration}")
            rates = rates[:duration]
        names = [p.strip() for p in policies.split(",") if p.strip()]
        if not names:
            raise TidalError(f"--policies is empty (got {policies!r})")
        console = Console(stderr=True, emoji=False, highlight=False)
        comp = compare(
            pipe,
            profs,
            rates,
            names,
            cfg,
            out_dir=out,
            forecast=forecast,
            trace_name=trace,
            progress=None if json_out else lambda p: console.print(f"simulating {p} …"),
        )
        if plot is not None:
            from tidal.sim.plot import plot_results

            plot_results(comp.results, slo_ms, plot, title=f"{pipe.name} on {trace}")
        if json_out:
            print(json.dumps({"results": [r.summary() for r in comp.results]}))
            return
        Console(emoji=False).print(
            _table(comp.results, f"{pipe.name} on {trace} ({len(rates)} s), SLO {slo_ms:g} ms")
        )
        for p, d in comp.forecasts.items():
            Console().print(f"  {p}: forecast {d}")
        if out is not None:
            Console().print(f"per-request outcomes: {out}/<policy>.csv")
        if plot is not None:
            Console().print(f"figure: {plot}")

    @app.command()
    def reproduce(
        which: str = typer.Argument("all", help="themis | sponge | ipa | infadapter | all"),
        out: Path = typer.Option(Path("docs/results.md"), help="Markdown report to write."),
        figures: Path = typer.Option(Path("docs/figures"), help="Directory for the figures."),
        seconds: int = typer.Option(None, help="Cut each window to N seconds (default: full)."),
        quick: bool = typer.Option(False, help="Windows cut to 120 s (all studies < 5 min)."),
    ) -> None:
        """Re-run each paper's comparison and regenerate docs/results.md (study by study)."""
        from tidal.apps.reproduce import reproduce as run

        console = Console(stderr=True, emoji=False, highlight=False)
        run(which, out, figures, seconds, console, quick=quick)

    @bench.command("sim")
    def bench_sim(
        days: float = typer.Option(22.0, help="Days of the Twitter trace to replay."),
        policy: str = typer.Option("static", help="Policy in control."),
        scale: bool = typer.Option(False, help="Also time 100x16 cores and a 10-stage pipeline."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Replay a long Twitter window in the fast mode and print simulated requests/s."""
        from tidal.bench.sim import bench_long_replay, bench_scale

        res = bench_long_replay(days, policy)
        if scale:
            res["scale"] = bench_scale()
        if json_out:
            print(json.dumps(res))
        else:
            Console().print(res)
