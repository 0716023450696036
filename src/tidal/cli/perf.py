"""`tidal bench goodput` (SLO goodput vs serving peers) and `tidal bench http-layers` (HTTP
server layers under the same wrk load). Thin: parse, call `tidal.bench`, print."""

from __future__ import annotations

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `goodput` (and `http-layers`) to `bench`."""

    @bench.command("goodput")
    def bench_goodput(
        model: str = typer.Option("resnet18", help="Catalog variant served by every server."),
        slo_ms: float = typer.Option(200.0, help="SLO (ms): Tidal's slo_ms, peers' timeouts."),
        levels: str = typer.Option("0.5,0.9,1.2,2", help="Offered loads, x capacity."),
        duration: float = typer.Option(15.0, help="Seconds of open-loop load per level."),
        servers: str = typer.Option(
            "tidal,triton,mlserver,ray_serve", help="Servers, comma-separated."
        ),
        rotate: int | None = typer.Option(None, help="Start the order at this index."),
        capacity: float | None = typer.Option(None, help="Skip measuring it (req/s)."),
        install_peers: bool = typer.Option(
            False, "--install-peers", help="Create .venv-peers/<peer> venvs first."
        ),
        png: str | None = typer.Option(None, help="Write the goodput curves to this PNG."),
        json_out: str | None = typer.Option(None, "--json", help="Write the figures here."),
    ) -> None:
        """SLO goodput of Tidal vs Triton, MLServer and Ray Serve (open-loop Poisson)."""
        import json

        from tidal.bench.goodput import plot, run_goodput, table

        res = run_goodput(
            model=model,
            slo_ms=slo_ms,
            levels=tuple(float(v) for v in levels.split(",") if v.strip()),
            duration_s=duration,
            servers=tuple(s.strip() for s in servers.split(",") if s.strip()),
            rotate=rotate,
            capacity=capacity,
            install=install_peers,
            echo=typer.echo,
        )
        typer.echo(table(res))
        typer.echo(json.dumps(res["verdict"], indent=2))
        if json_out:
            with open(json_out, "w") as f:
                json.dump(res, f, indent=2)
        if png and res["servers"]:
            typer.echo(f"wrote {plot(res, png)}")

    @bench.command("http-layers")
    def bench_http_layers(
        duration: float = typer.Option(8.0, help="Seconds of wrk load per measurement."),
        connections: int = typer.Option(16, help="wrk connections."),
        rotate: int | None = typer.Option(None, help="Start the order at this index."),
        install_granian: bool = typer.Option(
            False, "--install-granian", help="Create .venv-peers/granian first."
        ),
        json_out: str | None = typer.Option(None, "--json", help="Write the figures here."),
    ) -> None:
        """uvicorn vs tidal's server vs granian (ASGI, RSGI) vs raw httptools, same noop app."""
        import json

        from tidal.bench.http_layers import install_granian as _install
        from tidal.bench.http_layers import run_layers

        if install_granian:
            _install()
        res = run_layers(duration=duration, connections=connections, rotate=rotate,
                         echo=typer.echo)  # fmt: skip
        typer.echo(json.dumps(res, indent=2))
        if json_out:
            with open(json_out, "w") as f:
                json.dump(res, f, indent=2)
