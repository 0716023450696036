"""CLI of the models area: `tidal models list`, `tidal profile`, `tidal bench resize`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tidal.core.errors import TidalError

DEFAULT_VARIANTS = ("resnet18", "resnet34", "resnet50")


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise TidalError(f"{what} {text!r} must be a comma-separated list of numbers") from None


def _ints(text: str, what: str) -> tuple[int, ...]:
    vals = _floats(text, what)
    if any(v != int(v) for v in vals):
        raise TidalError(f"{what} {text!r} must be integers")
    return tuple(int(v) for v in vals)


def models_list(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    model_repository: Path = typer.Option(
        None, "--model-repository", help="Also list this repository's models (and problems)."
    ),
) -> None:
    """Print the model catalog: families, accuracy (and where it comes from), parameters; with
    --model-repository, the repository's versions too (source column)."""
    from tidal.models.catalog import VariantSpec, list_variants

    vs: list[VariantSpec] = list_variants()
    problems: list[str] = []
    if model_repository is not None:
        from tidal.models.repository import scan_repository

        repo = scan_repository(model_repository)
        repo.register()
        vs += [m.spec(v) for m in repo.models.values() for v in m.versions]
        problems = [p.message for p in repo.problems]
    if as_json:
        rows = [
            {
                "name": v.name,
                "source": "repository" if v.onnx_file is not None else "zoo",
                "onnx_file": str(v.onnx_file) if v.onnx_file is not None else None,
                "inputs": [t.to_json() for t in v.inputs] or None,
                "task": v.task,
                "family": v.family,
                "accuracy": v.accuracy,
                "accuracy_source": v.accuracy_source,
                "params": v.params,
                "input_shape": list(v.input_shape),
                "input_dtype": v.input.dtype,
                "label": v.label,
                "load_time_s": v.load_time_s,
            }
            for v in vs
        ]
        out: object = rows if model_repository is None else {"variants": rows, "problems": problems}
        typer.echo(json.dumps(out, indent=2))
        return
    title = "Tidal model zoo" + (f" + repository {model_repository}" if model_repository else "")
    t = Table(title=title)
    for col in ("variant", "source", "task", "params", "accuracy", "label", "input",
                "cold start s", "accuracy source"):  # fmt: skip
        t.add_column(col, overflow="fold")
    for v in vs:
        inp = (
            ", ".join(f"{x.name}:{x.datatype}{list(x.sample_shape)}" for x in v.inputs)
            if v.inputs
            else f"{v.input.dtype}{list(v.input_shape)}"
        )
        t.add_row(
            v.name,
            "repository" if v.onnx_file is not None else "zoo",
            v.task,
            f"{v.params / 1e6:.2f}M" if v.params >= 1e5 else str(v.params),
            f"{v.accuracy:.4f}",
            v.label,
            inp,
            f"{v.load_time_s:.2f}" if v.load_time_s is not None else "-",
            v.accuracy_source,
        )
    con = _console()
    con.print(t)
    for p in problems:
        con.print(f"[yellow]repository problem:[/] {p}", highlight=False)


def models_export(
    directory: Path = typer.Argument(..., help="Repository folder to write (created)."),
    variants: list[str] = typer.Argument(None, help="Zoo variants (default: all but noop)."),
) -> None:
    """Write zoo variants in repository form: <family>/<k>/model.onnx + config.yaml."""
    from tidal.models.export import export_zoo

    done = export_zoo(directory, list(variants) if variants else None)
    for name, (model, k) in done.items():
        typer.echo(f"{name} -> {directory / model / str(k) / 'model.onnx'}")


def _console() -> Console:
    """Rich wraps at 80 columns without a terminal: give piped output room for the tables."""
    import sys

    return Console() if sys.stdout.isatty() else Console(width=200)


def profile(
    variants: list[str] = typer.Argument(None, help="Variants (default: resnet18 34 50)."),
    quick: bool = typer.Option(False, "--quick", help="Small grid (batch 1,4 x cores 0.5,1)."),
    batches: str = typer.Option("", help="Batch sizes, e.g. 1,2,4,8,16."),
    cores: str = typer.Option("", help="Core counts, e.g. 0.5,1,1.5,2."),
    point_budget_s: float = typer.Option(0.0, help="Seconds per grid point (0: default)."),
    max_point_ms: float = typer.Option(0.0, help="Stop a core count's series past this p50."),
    out: Path = typer.Option(Path("tidal-profile.json"), "--out", "-o", help="Profile file."),
    import_sponge: Path = typer.Option(None, help="Import Sponge's latency grid CSV."),
    import_infadapter: Path = typer.Option(None, help="Import InfAdapter's capacity CSV."),
    show: Path = typer.Option(None, help="Print an existing profile file and exit."),
    merge: bool = typer.Option(False, help="Merge the new variants into an existing --out."),
    extrapolate: bool = typer.Option(
        False,
        "--extrapolate",
        help="Let planners use the fit beyond the measured cores (default: they stay inside).",
    ),
) -> None:
    """Measure p50/p99 latency over (batch, cores) in one worker resized in place, fit Sponge's
    model, write a profile file; or import a published profile (--import-sponge/-infadapter).
    The file records the cores measured per variant; planners and the simulator's planners
    never plan cores outside that range unless `--extrapolate` was given."""
    from dataclasses import replace

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from tidal.profiling import importers
    from tidal.profiling.profiler import (
        FULL_BATCHES,
        FULL_CORES,
        QUICK_BATCHES,
        QUICK_BUDGET,
        QUICK_CORES,
        Budget,
        Grid,
        profile_variants,
    )

    console = _console()
    if show is not None:
        from tidal.core.profile import ProfileSet

        print_profile(ProfileSet.load(show), console)
        return
    if import_sponge is not None or import_infadapter is not None:
        if import_sponge is not None:
            ps = importers.import_sponge(import_sponge)
        else:
            ps = importers.import_infadapter(import_infadapter)
        ps.save(out)
        print_profile(ps, console)
        console.print(f"wrote {out}")
        return
    names = list(variants) if variants else list(DEFAULT_VARIANTS)
    from tidal.models.catalog import get_variant
    from tidal.profiling.repo_profiles import split_version_path

    version_dirs = [n for n in names if split_version_path(n) is not None]
    if version_dirs and (len(version_dirs) != len(names) or merge):
        raise TidalError("give either zoo variants or REPO/<model>/<version> folders")
    if not version_dirs:
        for n in names:
            get_variant(n)  # an unknown name fails before the progress bar starts
    grid = Grid(
        _ints(batches, "batches") if batches else (QUICK_BATCHES if quick else FULL_BATCHES),
        _floats(cores, "cores") if cores else (QUICK_CORES if quick else FULL_CORES),
    )
    budget = QUICK_BUDGET if quick else Budget()
    if point_budget_s > 0:
        budget = replace(budget, point_budget_s=point_budget_s)
    if max_point_ms > 0:
        budget = replace(budget, max_point_ms=max_point_ms)
    if version_dirs:
        _profile_versions(version_dirs, grid, budget, out, console, extrapolate)
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("profiling", total=grid.size * len(names))

        def step(v: str, b: int, c: float) -> None:
            bar.update(task, advance=1, description=f"{v} b={b} c={c:g}")

        base = None
        if merge and out.exists():
            from tidal.core.profile import ProfileSet

            base = ProfileSet.load(out)  # fail before measuring if it is corrupt
        ps = profile_variants(
            names, grid, budget, progress=step, save_to=None if base else out,
            extrapolate=extrapolate,
        )  # fmt: skip
    if base is not None:
        from tidal.profiling.profiler import merge_profiles

        ps = merge_profiles(base, ps)
        ps.save(out)
    print_profile(ps, console)
    console.print(f"wrote {out}")


def _profile_versions(
    paths: list[str],
    grid: object,
    budget: object,
    out: Path,
    console: Console,
    extrapolate: bool = False,
) -> None:
    """`tidal profile REPO/<model>/<version>...`: full grid (default), stored in the profile
    cache (ONNX hash + CPU model + cores) so serving and planning use it, and written to --out."""
    from tidal.core.profile import ProfileSet
    from tidal.profiling.repo_profiles import profile_version

    total = ProfileSet()
    for p in paths:

        def step(v: str, b: int, c: float) -> None:
            console.print(f"  {v}: batch {b} x {c:g} cores measured", highlight=False)

        ps, entry = profile_version(p, grid, budget, progress=step, extrapolate=extrapolate)
        total = total.merged(ps).model_copy(update={"machine": ps.machine})
        console.print(f"{p}: cached as {entry}", highlight=False)
    total.save(out)
    print_profile(total, console)
    console.print(f"wrote {out}")


def _range_text(v: object) -> str:
    """`0.5-2 (planners stay inside)`, `... (extrapolated)` or `not recorded`."""
    from tidal.core.profile import VariantProfile

    assert isinstance(v, VariantProfile)
    if v.cores_measured is None:
        return "not recorded"
    lo, hi = v.cores_measured
    return f"{lo:g}-{hi:g} " + ("(extrapolated)" if v.extrapolate else "(planners stay inside)")


def print_profile(ps: object, console: Console) -> None:
    """A table of each variant's fit, R^2 and cold start."""
    from tidal.core.profile import ProfileSet

    assert isinstance(ps, ProfileSet)
    t = Table(title=f"profile ({ps.source})")
    for col in ("variant", "points", "gamma", "delta", "epsilon", "eta", "R^2", "worst rel",
                "p99/p50", "cold s", "l(1,1) ms", "l(8,2) ms", "cores measured"):  # fmt: skip
        t.add_column(col)

    def g(x: float) -> str:
        return f"{x:.3g}" if abs(x) >= 1e-6 else "0"

    for v in ps.variants.values():
        f = v.fit
        t.add_row(
            v.name, str(len(v.points)), g(f.gamma), g(f.delta), g(f.epsilon),
            g(f.eta), f"{f.r2:.3f}", f"{f.max_rel_residual:.3f}", f"{f.p99_ratio:.2f}",
            f"{v.load_time_s:.2f}", f"{v.latency_ms(1, 1):.1f}", f"{v.latency_ms(8, 2):.1f}",
            _range_text(v),
        )  # fmt: skip
    console.print(t)


def bench_resize_cmd(
    variant: str = typer.Option("resnet18", help="Variant to serve."),
    sizes: str = typer.Option("1,0.5,2", help="Core counts, in order."),
    batch: int = typer.Option(1, min=1, help="Batch size."),
    samples: int = typer.Option(30, min=1, help="Batches per size."),
    priority: bool = typer.Option(True, help="High CPU weight (shared machines)."),
) -> None:
    """One worker resized in place through SIZES; latency at each size (JSON)."""
    from tidal.bench.worker import bench_resize
    from tidal.models.catalog import get_variant
    from tidal.profiling.profiler import Grid

    get_variant(variant)
    cs = _floats(sizes, "sizes")
    Grid((batch,), cs)  # validates the core counts against this machine
    out = bench_resize(variant, cs, batch, samples, cpu_weight=262144 if priority else None)
    typer.echo(json.dumps(out, indent=2))


def bench_ipc_cmd(
    workers: int = typer.Option(4, min=1, max=64, help="No-op workers driven concurrently."),
    calls: int = typer.Option(2000, min=10, help="Round trips per measurement."),
    priority: bool = typer.Option(True, help="High CPU weight (shared machines)."),
) -> None:
    """No-op worker round trips: sync, async, async over several workers (JSON)."""
    from tidal.bench.worker import bench_ipc

    out = bench_ipc(workers, calls, cpu_weight=262144 if priority else None)
    typer.echo(json.dumps(out, indent=2))


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add this area's commands to `app` and its benchmarks to `bench`."""
    models = typer.Typer(help="The model zoo and model repositories.", no_args_is_help=True)
    models.command("list")(models_list)
    models.command("export")(models_export)
    app.add_typer(models, name="models")
    app.command("profile")(profile)
    bench.command("resize")(bench_resize_cmd)
    bench.command("worker-ipc")(bench_ipc_cmd)
