"""CLI of the cep area: `tidal cep serve | bench | query`, and `tidal bench cep`."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
from pathlib import Path

import typer

from tidal.core.errors import TidalError

cep = typer.Typer(
    help="Operators as a service for complex event processing (CEPless).", no_args_is_help=True
)


@cep.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", help="Bind address (loopback by default)."),
    port: int = typer.Option(8470, help="HTTP port of the node manager."),
    root: Path = typer.Option(Path(".tidal-cep"), help="Registry and token directory."),
    store: str = typer.Option(
        "embedded",
        help="embedded (unix socket, no server) | redis (start a private redis-server) | "
        "redis://host:port/db",
    ),
    codec: str = typer.Option("json", help="json | packed"),
    mode: str = typer.Option("blob", help="blob (one frame per batch) | faithful (per event)"),
    batch: int = typer.Option(1000, help="B: events per pop."),
) -> None:
    """Run the node manager's HTTP API (bearer token from $TIDAL_CEP_TOKEN or <root>/token)."""
    import uvicorn

    from tidal.cep.api import make_app
    from tidal.cep.manager import DeployDefaults, NodeManager
    from tidal.cep.sockstore import SocketStoreServer
    from tidal.cep.store import MemoryStore

    root.mkdir(parents=True, exist_ok=True)
    token = os.environ.get("TIDAL_CEP_TOKEN") or secrets.token_urlsafe(24)
    tok_file = root / "token"
    tok_file.write_text(token)
    tok_file.chmod(0o600)
    srv = rs = None
    if store == "embedded":
        srv = SocketStoreServer(MemoryStore("cep"), str((root / "store.sock").resolve()))
        url = srv.url
    elif store == "redis":
        from tidal.cep.redis_server import RedisServer

        rs = RedisServer()
        url = rs.url
    elif store.startswith("redis://"):
        url = store
    else:
        raise TidalError(f"--store must be embedded, redis or redis://..., got {store!r}")
    try:
        defaults = DeployDefaults(codec=codec, mode=mode, batch=batch)
    except ValueError as e:
        raise TidalError(f"bad option: {e}") from None
    m = NodeManager(root, url, defaults)
    typer.echo(
        f"tidal cep: node manager on http://{host}:{port}, store {url}, token in {tok_file}",
        err=True,
    )
    # uvicorn re-raises SIGTERM after its graceful shutdown: turn it into SystemExit so the
    # operators, the fork server and a private redis-server are stopped below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(make_app(m, token), host=host, port=port, log_level="warning")
    finally:
        m.close()
        if srv is not None:
            srv.close()
        if rs is not None:
            rs.stop()


@cep.command("bench")
def bench_cmd(
    backends: str = typer.Option(
        "native,embedded,redis,redis-faithful",
        help="Comma-separated: native, embedded, embedded-proc, redis, redis-faithful, "
        "redis-cepless.",
    ),
    events: int = typer.Option(500_000, help="Events of the saturating run."),
    batch: int = typer.Option(1000, help="B."),
    rate: float = typer.Option(10_000, help="Paced rate (events/s) for latency."),
    paced_events: int = typer.Option(20_000, help="Events of the paced run."),
    state_cards: int = typer.Option(131_072, help="Keyed state cards (8 bytes each)."),
    updates: int = typer.Option(5, help="Hot updates during the stateful run."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Throughput, latency, hot-update gap, lost/duplicated events per backend."""
    from tidal.bench.cep import run

    rows = run(
        [b.strip() for b in backends.split(",") if b.strip()],
        n=events,
        batch=batch,
        rate=rate,
        paced_n=paced_events,
        state_cards=state_cards,
        updates=updates,
    )
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for r in rows:
        typer.echo(
            f"{r['backend']:>18}: {r['events_per_s']:>14,.0f} ev/s  p50 {ms(r['p50_ms'])} ms  "
            f"p99 {ms(r['p99_ms'])} ms  gap {ms(r['update_gap_ms'])} ms  "
            f"update {ms(r['update_ms'])} ms  lost {r['lost_events']}  "
            f"dup {r['duplicated_events']}"
        )


@cep.command("query")
def query_cmd(
    text: str = typer.Argument(..., help="A SASE query (PATTERN SEQ(...) ...)."),
    events: int = typer.Option(10_000, help="Generated transactions to run it on."),
    seed: int = typer.Option(0),
    cards: int = typer.Option(100),
    rate: float = typer.Option(2.0, help="Transactions per second of event time."),
    limit: int = typer.Option(20, help="Rows to print."),
) -> None:
    """Run a SASE query (without SERVERLESS steps) over seeded transactions; print rows."""
    from tidal.cep import workload
    from tidal.cep.stream import SaseEngine

    pipe = SaseEngine().compile(text)
    rows = pipe.run(workload.as_dicts(workload.transactions(events, seed, cards, rate)))
    for r in rows[:limit]:
        typer.echo(json.dumps(r, default=str))
    typer.echo(f"{len(rows)} matches", err=True)


def _hub(url: str, token_file: Path | None):  # type: ignore[no-untyped-def]
    from tidal.cep.api import ApiHub

    token = os.environ.get("TIDAL_CEP_TOKEN")
    if token_file is not None:
        if not token_file.is_file():
            raise TidalError(f"token file not found: {token_file}")
        token = token_file.read_text().strip()
    if not token:
        raise TidalError("no token: set $TIDAL_CEP_TOKEN or pass --token-file")
    return ApiHub(url, token)


URL = typer.Option("http://127.0.0.1:8470", "--url", help="Node manager URL.")
TOKEN_FILE = typer.Option(None, "--token-file", help="File holding the bearer token.")


@cep.command("register")
def register_cmd(
    name: str = typer.Argument(..., help="Operator name."),
    source: Path = typer.Argument(..., help="Operator source (.py or .js)."),
    empty_state: bool = typer.Option(False, help="This version starts from empty state."),
    url: str = URL,
    token_file: Path | None = TOKEN_FILE,
) -> None:
    """Register a new version of an operator from a source file; prints the version."""
    if not source.is_file():
        raise TidalError(f"operator source not found: {source}")
    lang = "node" if source.suffix == ".js" else "python"
    v = _hub(url, token_file).register(
        name, language=lang, source=source.read_text(), empty_state=empty_state
    )
    typer.echo(json.dumps({"name": name, "version": v}))


@cep.command("request")
def request_cmd(
    name: str = typer.Argument(...), url: str = URL, token_file: Path | None = TOKEN_FILE
) -> None:
    """Start (if needed) and print an operator's queue addresses."""
    typer.echo(json.dumps(_hub(url, token_file).request(name)))


@cep.command("update")
def update_cmd(
    name: str = typer.Argument(...),
    version: int = typer.Argument(...),
    url: str = URL,
    token_file: Path | None = TOKEN_FILE,
) -> None:
    """Hot-update a running operator to `version`; prints the timings."""
    typer.echo(json.dumps(_hub(url, token_file).update(name, version)))


@cep.command("list")
def list_cmd(url: str = URL, token_file: Path | None = TOKEN_FILE) -> None:
    """List operators, versions and running instances."""
    typer.echo(json.dumps(_hub(url, token_file).list(), indent=1))


@cep.command("stop")
def stop_cmd(
    name: str = typer.Argument(...), url: str = URL, token_file: Path | None = TOKEN_FILE
) -> None:
    """Stop a running operator."""
    typer.echo(json.dumps(_hub(url, token_file).stop(name)))


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add this area's commands to `app` and its benchmarks to `bench`."""
    app.add_typer(cep, name="cep")
    bench.command("cep")(bench_cmd)
