"""The `tidal` command. Each area registers its own commands from its own module.

A TidalError anywhere becomes a one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from tidal.core.errors import TidalError

app = typer.Typer(
    name="tidal",
    help="Tidal: SLO-aware inference serving that autoscales on every knob.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
bench = typer.Typer(help="Benchmarks that print figures (never asserted by tests).")
app.add_typer(bench, name="bench")

# One module per area; each defines `register(app, bench)`.
AREAS = ("models", "serve", "plan", "sim", "control", "cep", "innet", "perf", "hardening", "ray")
for _area in AREAS:
    importlib.import_module(f"tidal.cli.{_area}").register(app, bench)


def main() -> None:
    """Entry point of the console script."""
    try:
        app(standalone_mode=True)
    except TidalError as e:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
