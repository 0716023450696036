"""`tidal bench overload` and `tidal bench soak` (issue 13: overload, faults, hostile clients)."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `overload` and `soak` to `bench`."""
    del app

    @bench.command("overload")
    def overload(
        duration: float = typer.Option(20.0, help="Seconds of load per overload level."),
        variant: str = typer.Option("digits-cnn", help="Model variant served."),
        cores: float = typer.Option(1.0, help="Cores of the single replica."),
        no_abandon: bool = typer.Option(False, "--no-abandon", help="Skip the abandon run."),
        no_sigstop: bool = typer.Option(False, "--no-sigstop", help="Skip the SIGSTOP run."),
        margin: float = typer.Option(1.0, help="The gateway's admission_margin."),
        slo_in: str = typer.Option(
            "both", help="Where requests carry their SLO: both (body + x-tidal-slo-ms) or body."
        ),
        json_out: bool = typer.Option(False, "--json", help="Print JSON at the end."),
    ) -> None:
        """Outcome counts at 2x and 10x overload (1- and 1024-row requests), abandon RSS,
        SIGSTOP detection time."""
        from tidal.bench.overload import run_overload

        out = run_overload(
            variant=variant,
            cores=cores,
            duration=duration,
            abandon=not no_abandon,
            sigstop=not no_sigstop,
            margin=margin,
            slo_in=slo_in,
        )
        if json_out:
            typer.echo(json.dumps(out, indent=2, default=str))

    @bench.command("soak")
    def soak(
        minutes: float = typer.Option(5.0, help="Minutes of mixed load."),
        variant: str = typer.Option("digits-cnn", help="Model variant served."),
        load: float = typer.Option(0.8, help="Offered load as a fraction of the capacity."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON at the end."),
    ) -> None:
        """Mixed 1-1024-row load at 80% of capacity: RSS, descriptors and outcomes over time."""
        from tidal.bench.soak import run_soak

        out = run_soak(minutes, variant=variant, load=load)
        if json_out:
            typer.echo(json.dumps(out, indent=2, default=str))
