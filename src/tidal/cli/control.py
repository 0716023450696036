"""CLI commands of the control area: `demo`, `loadgen`, `validate`.

`demo` is Tidal's main job (`make demo`): the two-stage pipeline under a Twitter surge, live,
under `hpa` then `themis` (tidal.apps.demo). `loadgen` replays a trace open-loop against any
OIP v2 endpoint; `validate` compares a live run with the simulator.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tidal.core.errors import TidalError


def _loadgen(
    url: str,
    model: str,
    trace: str,
    damping: int | None,
    compress: int,
    seed: int,
    slo_ms: float | None,
    lte: bool,
    duration_s: float | None,
    out: Path,
    as_json: bool,
) -> None:
    from rich.progress import Progress

    from tidal.workload.loadgen import (
        LoadGenerator,
        fetch_metadata,
        schedule_from_trace,
        v2_body_from_metadata,
        write_outcomes,
    )

    console = Console(stderr=as_json)
    schedule = schedule_from_trace(
        trace,
        damping=damping,
        compress=compress,
        seed=seed,
        slo_ms=slo_ms,
        lte=lte,
        duration_s=duration_s,
    )
    if not schedule.offsets:
        raise TidalError(
            f"trace {trace!r} gives no requests (damping {damping}, duration {duration_s})"
        )
    console.print(
        f"replaying {trace} ({len(schedule.offsets)} requests over {schedule.duration_s:.0f} s, "
        f"compress x{compress}, damping {damping or 'paper default'}) against {url} model {model!r}"
    )

    async def main() -> tuple[Any, Any]:
        meta = await fetch_metadata(url, model)
        body = v2_body_from_metadata(meta)
        with Progress(console=console, transient=as_json) as prog:
            task = prog.add_task("replay", total=len(schedule.offsets))
            gen = LoadGenerator(
                f"{url.rstrip('/')}/v2/models/{model}/infer",
                body,
                on_progress=lambda done, total: prog.update(task, completed=done),
            )
            return await gen.run(schedule)

    outcomes, report = asyncio.run(main())
    write_outcomes(out, outcomes)
    report.outcomes_file = str(out)
    if as_json:
        print(report.to_json())
        return
    console.print(
        f"{report.requests} requests, target {report.target_rps:.1f} req/s, sent "
        f"{report.achieved_rps:.1f} req/s; violations {report.violation_rate:.2%} {report.counts}; "
        f"p50 {report.p50_ms:.1f} ms, p99 {report.p99_ms:.1f} ms; outcomes in {out}"
    )
    if not report.kept_up:
        console.print(f"[bold yellow]the load generator did not keep up:[/] {report.reason}")


def _advance(prog: Any, task: Any, done: int, total: int) -> None:
    prog.update(task, completed=done)


def _demo(
    out: Path,
    compress: int,
    peak_load: float,
    slo_ms: float | None,
    duration: float | None,
    policies: str,
    seed: int,
) -> None:
    import tempfile

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from tidal.apps.demo import make_setup, probe_slowdown, run_policy
    from tidal.apps.report import print_summary, verdict, write_report

    console = Console()
    setup = make_setup(
        slo_ms=slo_ms, compress=compress, peak_load=peak_load, seed=seed, duration_s=duration
    )
    with tempfile.TemporaryDirectory(prefix="tidal-probe-") as tmp:
        console.print("probing this machine's speed on the pipeline (12 requests)...")
        slow = probe_slowdown(setup, Path(tmp))
    console.print(f"the pipeline runs x{slow:.2f} its profile's latency here now")
    if slow > 1.05:
        setup = make_setup(
            slo_ms=slo_ms,
            compress=compress,
            peak_load=peak_load,
            seed=seed,
            duration_s=duration,
            slowdown=slow,
        )
    names = [p.strip() for p in policies.split(",") if p.strip()]
    chain = " -> ".join(f"{st.name} [{st.variants[0]}]" for st in setup.pipeline.stages)
    console.print(
        f"[bold]Tidal demo[/]: pipeline {setup.pipeline_file} ({escape(chain)}), "
        f"SLO {setup.slo_ms:g} ms, {setup.cores:g} worker cores, policies {', '.join(names)}"
    )
    console.print(f"trace: {setup.trace_desc}")
    if setup.synthetic:
        console.print("[yellow]../shared is missing: the surge is SYNTHETIC.[/]")
    console.print(
        f"{len(setup.schedule.offsets)} requests over {setup.schedule.duration_s:.0f} s per policy"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="tidal-demo-") as tmp:
        for name in names:
            work = Path(tmp) / name
            work.mkdir()
            console.print(f"[bold]{name}[/]: starting Tidal (gateway + controller)...")
            with Progress(
                TextColumn(f"{name} replay"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} requests"),
                TimeRemainingColumn(),
                console=console,
            ) as prog:
                task = prog.add_task(name, total=len(setup.schedule.offsets))
                res = run_policy(
                    setup,
                    name,
                    work,
                    on_ready=lambda url: prog.console.print(f"dashboard: [link]{url}[/link]"),
                    on_progress=functools.partial(_advance, prog, task),
                )
            results.append(res)
            row = res.row()
            console.print(
                f"{name}: violations {row['slo_violation_rate']:.2%}, p99 {row['p99_ms']} ms, "
                f"{row['core_seconds']} core-s"
            )
    print_summary(console, results)
    v, notes = verdict(results)
    index = write_report(setup, results, out, v, notes)
    console.print(v)
    for n in notes:
        console.print(f"  {n}")
    console.print(f"report: {index}")


def _validate(
    trace: str,
    policy: str,
    pipeline: str | None,
    slo_ms: float,
    damping: int | None,
    compress: int,
    duration: float,
    seed: int,
    as_json: bool,
    save_live: Path | None = None,
    from_live: Path | None = None,
) -> None:
    console = Console(stderr=as_json)
    if from_live is not None:
        from tidal.apps.validate import revalidate

        console.print(f"validate: the live run saved in {from_live}, simulated")
        cmp = revalidate(from_live)
        policy = str(cmp.live.get("policy", policy))
    else:
        console.print(f"validate: {policy} on {trace} ({duration:g} s), live then simulated")
        cmp = _validate_live(
            trace, policy, pipeline, slo_ms, damping, compress, duration, seed, console, save_live
        )
    _print_validate(cmp, policy, console, as_json)


def _validate_live(
    trace: str,
    policy: str,
    pipeline: str | None,
    slo_ms: float,
    damping: int | None,
    compress: int,
    duration: float,
    seed: int,
    console: Console,
    save_live: Path | None,
) -> Any:
    from rich.progress import Progress

    from tidal.apps.validate import validate

    with Progress(console=console, transient=True) as prog:
        task = prog.add_task("live replay", total=None)
        return validate(
            trace,
            policy,
            pipeline=pipeline,
            slo_ms=slo_ms,
            damping=damping,
            compress=compress,
            duration_s=duration,
            seed=seed,
            on_progress=lambda d, t: prog.update(task, completed=d, total=t),
            on_ready=lambda url: prog.console.print(f"dashboard: {url}"),
            save_live=save_live,
        )


def _print_validate(cmp: Any, policy: str, console: Console, as_json: bool) -> None:
    import json

    from tidal.apps.validate import TARGET_CORE_S_REL, TARGET_P99_REL, TARGET_VIOLATION_PP

    if as_json:
        print(json.dumps(cmp.to_dict(), indent=2))
        return
    t = Table(title=f"{policy}: live vs simulator")
    cols = ("run", "requests", "SLO violations", "ref/exp/late/other", "p99 (ms)")
    for c in (*cols, "core-seconds"):
        t.add_column(c, justify="right")
    for name, r in (("live", cmp.live), ("simulator", cmp.sim)):
        v = dict(r.get("violations") or {})
        main = [int(v.pop(k, 0)) for k in ("refused", "expired", "late")]
        t.add_row(
            name,
            str(r["requests"]),
            f"{r['slo_violation_rate']:.2%}",
            "/".join(str(x) for x in (*main, int(sum(v.values())))),
            str(r["p99_ms"]),
            str(r["core_seconds"]),
        )
    console.print(t)
    d = cmp.to_dict()["diff"]
    console.print(
        f"difference (live - sim): violations {d['violation_rate_pp']:+.2f} pp, "
        f"p99 {d['p99_rel']:+.1%}, core-seconds {d['core_seconds_rel']:+.1%}"
        if d["p99_rel"] is not None
        else f"difference (live - sim): violations {d['violation_rate_pp']:+.2f} pp, "
        f"core-seconds {d['core_seconds_rel']:+.1%}"
    )
    if cmp.slowdown:
        raw = cmp.sim_profile_as_measured or {}
        console.print(
            "simulator profile = reference x live slowdown "
            + ", ".join(f"{k} x{v:.2f}" for k, v in cmp.slowdown.items())
            + f"; control loop {cmp.control_lead_s:.2f} s ahead of the load"
            + f" (on the unscaled reference profile the simulator gives "
            f"{raw.get('slo_violation_rate', float('nan')):.2%} violations, "
            f"{raw.get('core_seconds')} core-s)"
        )
    verdict = "AGREE" if cmp.agrees else "DO NOT AGREE"
    console.print(
        f"agreement target: violations within {TARGET_VIOLATION_PP:g} pp, p99 within "
        f"{TARGET_P99_REL:.0%} and core-seconds within {TARGET_CORE_S_REL:.0%}: simulator and "
        f"live {verdict} (closed loop: each side's controller decides)"
    )
    if cmp.divergence:
        dv = cmp.divergence

        def side(x: dict[str, Any]) -> str:
            plan = ", ".join(
                f"{p['stage']} {p['replicas']}x{p['cores']:g} b{p['batch']}" for p in x["plan"]
            )
            return f"{plan} (rate {x['rate']}, slowdown {x['slowdown']})"

        console.print(
            escape(
                f"first different plan at t={dv['t']:g} s (decision {dv['decision']}): live "
                f"{side(dv['live'])}, simulated {side(dv['sim'])}"
            )
        )
    if cmp.replayed is not None:
        rp = cmp.replayed.to_dict()
        d = rp["diff"]
        console.print(
            f"the live decisions simulated ({cmp.replay_ticks} ticks replayed): "
            f"{rp['sim']['slo_violation_rate']:.2%} violations, difference "
            f"{d['violation_rate_pp']:+.2f} pp, p99 "
            + ("n/a" if d["p99_rel"] is None else f"{d['p99_rel']:+.1%}")
            + f", core-seconds {d['core_seconds_rel']:+.1%}: "
            + ("AGREE" if rp["agrees"] else "DO NOT AGREE")
        )


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add this area's commands to `app` and its benchmarks to `bench`."""

    @app.command("validate")
    def validate_cmd(
        trace: str = typer.Option("twitter:bursty", help="Trace spec (tidal.workload)."),
        policy: str = typer.Option("themis", help="Policy (registry name)."),
        pipeline: str | None = typer.Option(
            None, help="Pipeline YAML (default examples/pipelines/two-stage.yaml)."
        ),
        slo_ms: float = typer.Option(1000.0, help="End-to-end SLO (ms)."),
        damping: int | None = typer.Option(None, help="Integer damping of the trace."),
        compress: int = typer.Option(1, min=1, help="Time compression."),
        duration: float = typer.Option(60.0, min=5, help="Seconds of trace to replay."),
        seed: int = typer.Option(0),
        as_json: bool = typer.Option(False, "--json"),
        save_live: Path | None = typer.Option(
            None, help="Write the live run (summary, decision log) to this JSON file."
        ),
        from_live: Path | None = typer.Option(
            None,
            help="Re-simulate a live run saved with --save-live (its own options) instead "
            "of running one.",
        ),
    ) -> None:
        """Run the same short trace and policy live and in the simulator; compare them."""
        if slo_ms <= 0:
            raise TidalError(f"--slo-ms must be > 0, got {slo_ms}")
        _validate(
            trace,
            policy,
            pipeline,
            slo_ms,
            damping,
            compress,
            duration,
            seed,
            as_json,
            save_live,
            from_live,
        )

    @app.command()
    def loadgen(
        url: str = typer.Option("http://127.0.0.1:8000", help="Base URL of an OIP v2 server."),
        model: str = typer.Option(..., help="Model (or pipeline) name to infer."),
        trace: str = typer.Option(
            "twitter:bursty", help="Trace: twitter:NAME, twitter:START-END, synthetic:SHAPE..."
        ),
        damping: int | None = typer.Option(
            None, help="Integer divisor of the per-second counts (default: the paper's)."
        ),
        compress: int = typer.Option(1, min=1, help="Time compression: play k x faster."),
        seed: int = typer.Option(0),
        slo_ms: float | None = typer.Option(None, help="Per-request budget (ms)."),
        lte: bool = typer.Option(
            False, help="Per-request budgets = slo_ms - LTE transfer time (Sponge)."
        ),
        duration: float | None = typer.Option(None, help="Stop after this many seconds."),
        out: Path = typer.Option(Path("loadgen-outcomes.csv"), help="Per-request outcomes CSV."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Replay a trace open-loop against any Open Inference Protocol v2 endpoint."""
        if slo_ms is not None and slo_ms <= 0:
            raise TidalError(f"--slo-ms must be > 0, got {slo_ms}")
        _loadgen(url, model, trace, damping, compress, seed, slo_ms, lte, duration, out, as_json)

    @app.command()
    def demo(
        out: Path = typer.Option(Path("demo-report"), help="Report directory (HTML + PNG)."),
        compress: int = typer.Option(8, min=1, help="Time compression of the 20-min window."),
        peak_load: float = typer.Option(
            0.5, min=0.05, max=3.0, help="Surge peak as a fraction of the machine's capacity."
        ),
        slo_ms: float | None = typer.Option(None, help="End-to-end SLO (default: from profile)."),
        duration: float | None = typer.Option(None, help="Cut the replay (seconds)."),
        policies: str = typer.Option("hpa,themis", help="Comma-separated policies to run."),
        seed: int = typer.Option(0),
    ) -> None:
        """Tidal's main job: the two-stage pipeline under a surge, hpa vs themis, live."""
        _demo(out, compress, peak_load, slo_ms, duration, policies, seed)
