"""`tidal bench ray-cluster`: one machine vs a local multi-node Ray cluster (docs/deploy.md)."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `ray-cluster` to `bench`."""
    del app

    @bench.command("ray-cluster")
    def ray_cluster(
        trace: str = typer.Option("twitter:bursty", help="Trace (tidal.workload forms)."),
        policy: str = typer.Option("themis", help="Planner of both runs."),
        pipeline: str = typer.Option(
            "examples/pipelines/two-stage.yaml", help="Pipeline file (examples/pipelines/)."
        ),
        nodes: int = typer.Option(3, min=1, max=16, help="Ray worker nodes started here."),
        slo_ms: float = typer.Option(1000.0, min=1.0, help="SLO of every request."),
        duration: float = typer.Option(60.0, min=5.0, help="Seconds of the trace replayed."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON, not the table."),
    ) -> None:
        """The same trace and policy on this machine and on a local `nodes`-node Ray cluster
        with the cores scaled to match: violations, p99 and core-seconds side by side."""
        from tidal.bench.ray_cluster import bench_ray_cluster, format_report

        out = bench_ray_cluster(trace, policy, pipeline, nodes, slo_ms, duration)
        if json_out:
            typer.echo(json.dumps(out, indent=2, default=str))
            return
        typer.echo(format_report(out))
