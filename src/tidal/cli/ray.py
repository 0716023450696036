"""`tidal bench ray-cluster`: one machine vs a local multi-node Ray cluster (docs/deploy.md)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `ray-cluster` to `bench`."""
    del app

    @bench.command("ray-cluster")
    def ray_cluster(
        policy: str = typer.Option("themis", help="Planner of both runs."),
        nodes: int = typer.Option(3, min=1, max=16, help="Ray worker nodes started here."),
        compress: int = typer.Option(8, min=1, max=64, help="Trace seconds per second."),
        peak_load: float = typer.Option(
            0.5, min=0.05, max=3.0, help="Surge peak as a fraction of the pipeline's capacity."
        ),
        slo_ms: float = typer.Option(
            None, min=1.0, help="SLO of every request; default 3x the initial plan's p99."
        ),
        duration: float = typer.Option(100.0, min=5.0, help="Seconds of the window replayed."),
        reserve: float = typer.Option(
            0.0, min=0.0, max=64.0, help="Cores left to the gateway and load generator."
        ),
        no_probe: bool = typer.Option(
            False, "--no-probe", help="Size the load on the profile (no slowdown probe)."
        ),
        only: str = typer.Option(
            "local,local-nodes,ray", help="Runs (comma-separated): local, local-nodes, ray."
        ),
        against: str = typer.Option(
            None, help="JSON of an earlier --json run: its runs fill the others (same setup)."
        ),
        keep: str = typer.Option(None, help="Keep each run's files (decisions, outcomes) here."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON, not the table."),
    ) -> None:
        """The two-stage example under one policy on the bursty window (as `make demo`), on
        this machine and on a local `nodes`-node Ray cluster with the cores scaled to match:
        violations, p99 and core-seconds side by side."""
        from tidal.bench.ray_cluster import bench_ray_cluster, format_report

        out = bench_ray_cluster(
            policy,
            nodes,
            compress,
            peak_load,
            slo_ms,
            duration,
            probe=not no_probe,
            reserve=reserve,
            only=[x.strip() for x in only.split(",") if x.strip()],
            against=json.loads(Path(against).read_text()) if against else None,
            keep=Path(keep) if keep else None,
            progress=lambda m: typer.echo(m, err=True),
        )
        if json_out:
            typer.echo(json.dumps(out, indent=2, default=str))
            return
        typer.echo(format_report(out))
