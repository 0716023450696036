"""CLI commands of the control area: `demo`, `loadgen`, `validate`.

`demo` is Tidal's main job (`make demo`). Until the live closed loop lands it is an honest
interim: it prints the model catalog when available and says the live run is not built yet.
"""

from __future__ import annotations

import importlib

import typer
from rich.console import Console
from rich.table import Table


def _interim_demo(console: Console) -> None:
    console.print("[bold]Tidal demo[/] (interim): the live autoscaled run is not built yet.")
    try:
        catalog = importlib.import_module("tidal.models.catalog")
        variants = catalog.list_variants()
    except Exception as e:  # the catalog is another area's work in progress
        console.print(f"The model catalog is not available yet ({e}).")
        return
    table = Table(title="Model catalog")
    for col in ("variant", "task", "accuracy", "params", "label"):
        table.add_column(col)
    for v in variants:
        table.add_row(v.name, v.task, f"{v.accuracy:.4f}", f"{v.params:,}", v.label)
    console.print(table)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add this area's commands to `app` and its benchmarks to `bench`."""

    @app.command()
    def demo() -> None:
        """Tidal's main job: the two-stage pipeline under a surge, hpa vs themis, live."""
        _interim_demo(Console())
