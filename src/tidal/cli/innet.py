"""CLI commands of the innet area (being built: see the open issue)."""

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add this area's commands to `app` and its benchmarks to `bench`."""
