"""CLI of the cep area: `tidal cep serve | bench | query`, and `tidal bench cep`."""

from __future__ import annotations

import gc
import json
import os
import secrets
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from tidal.core.errors import TidalError

if TYPE_CHECKING:
    from tidal.cep.api import ApiHub

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
    flush_ms: float = typer.Option(1.0, help="F: host flush period (ms)."),
    pop: str = typer.Option("commit", help="commit (redelivery, no loss) | pop (CEPless)."),
    checkpoint_every: int = typer.Option(
        10_000, help="K: checkpoint keyed state every K events; a crash replays < K events."
    ),
    max_failures: int = typer.Option(3, help="N: failures of one event before it is parked."),
    max_pending: int = typer.Option(
        100_000, help="Event endpoint: refuse pushes (429) above this many pending events."
    ),
    allow_command: bool = typer.Option(
        False, help="Accept `language: command` versions (runs any program)."
    ),
    sandbox: bool = typer.Option(
        True, help="Run operators as an unprivileged user with limits (when root)."
    ),
    node_update: str = typer.Option(
        "swap",
        help="Node.js hot update: swap (new module in the running runtime, state kept in "
        "memory) | process (a new process, state handed over).",
    ),
) -> None:
    """Run the node manager's HTTP API (bearer token from $TIDAL_CEP_TOKEN or <root>/token)."""
    import uvicorn

    from tidal.cep.api import make_app
    from tidal.cep.gateway import Gateway
    from tidal.cep.manager import DeployDefaults, NodeManager
    from tidal.cep.sandbox import SandboxConfig
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
        # the store serves operators from threads of this process (API, gateway, supervisor
        # too): hand the GIL over every 0.5 ms, so a store round trip does not wait 5 ms
        sys.setswitchinterval(0.0005)
    elif store == "redis":
        from tidal.cep.redis_server import RedisServer

        rs = RedisServer()
        url = rs.url
    elif store.startswith("redis://"):
        url = store
    else:
        raise TidalError(f"--store must be embedded, redis or redis://..., got {store!r}")
    try:
        defaults = DeployDefaults(
            codec=codec,
            mode=mode,
            batch=batch,
            flush_ms=flush_ms,
            pop=pop,
            checkpoint_every=checkpoint_every,
            max_failures=max_failures,
            allow_command=allow_command,
            node_update=node_update,
        )
        gw_limits = {"max_pending": max_pending}
    except ValueError as e:
        from tidal.core.errors import first_error

        raise TidalError(f"bad option: {first_error(e)}") from None  # type: ignore[arg-type]
    m = NodeManager(root, url, defaults, sandbox_cfg=SandboxConfig(enabled=sandbox))
    gw = Gateway(m.request, **gw_limits)
    typer.echo(
        f"tidal cep: node manager on http://{host}:{port}, store {url}, token in {tok_file}",
        err=True,
    )
    # uvicorn re-raises SIGTERM after its graceful shutdown: turn it into SystemExit so the
    # operators, the fork server and a private redis-server are stopped below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        app = make_app(m, token, gw)
        gc.collect()  # start-up objects leave the collector's generations: a full collection
        gc.freeze()  # later does not walk them while this process serves the store
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        gw.close()
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
    update_gap: bool = typer.Option(
        False,
        "--update-gap",
        help="Instead: hot-update gap measured from the result stream, Python and Node.js "
        "(typed-array state and plain-JSON state in place; typed-array state to a new process).",
    ),
    gap_rate: float = typer.Option(50_000, help="Events/s of the --update-gap stream."),
    flink: bool = typer.Option(
        False,
        "--flink",
        help="Instead: Flink + Tidal operator vs FlinkCEP vs Tidal's Python host (make cep-flink).",
    ),
) -> None:
    """Throughput, latency, hot-update gap, lost/duplicated events per backend."""
    from tidal.bench.cep import run

    load0 = os.getloadavg()
    if update_gap:
        from tidal.bench.cep_gap import run_gap

        gap_rows = [
            ("python", "swap"),
            ("node", "swap"),
            ("node-json", "swap"),
            ("node", "process"),
        ]
        grows = [
            run_gap(lang, rate=gap_rate, cards=state_cards, updates=updates, node_update=how)
            for lang, how in gap_rows
        ]
        _emit(grows, load0, as_json, lambda r: (
            f"{r['backend']:>26}: gap from results median {r['gap_median_ms']:.2f} ms, max "
            f"{r['gap_max_ms']:.2f} ms (steady stream's longest interval "
            f"{r['steady_max_interval_ms']:.2f} ms) over {r['updates']} updates at "
            f"{r['rate']:,.0f} ev/s with {r['state_cards']:,} cards; update_ms "
            f"{r['update_ms']}; gaps {r['gap_from_results_ms']}; lost {r['lost_events']} dup "
            f"{r['duplicated_events']} counts "
            f"{r['per_key_counts_ok']}"
        ))  # fmt: skip
        return
    if flink:
        from tidal.bench.cep_flink import run_flink

        frows = run_flink(n=events, batch=batch)
        _emit(frows, load0, as_json, lambda r: (
            f"{r['backend']:>21}: {r['events_per_s']:>11,.0f} ev/s  p50 {r['p50_ms']:.2f} ms  "
            f"p99 {r['p99_ms']:.2f} ms  lost {r['lost_events']}  dup {r['duplicated_events']}"
            f" ({r['loss_counted_on']})  matches {r['matches']}/{r['matches_expected']}"
        ))  # fmt: skip
        by = {r["backend"]: r for r in frows}
        ft, fc = by.get("flink-tidal-operator"), by.get("flinkcep")
        if not as_json and ft is not None:
            ok = ft["events_per_s"] >= 100_000 and ft["lost_events"] == ft["duplicated_events"] == 0
            vs = f", {ft['events_per_s'] / fc['events_per_s']:.2f}x FlinkCEP" if fc else ""
            typer.echo(
                f"goal >= 100,000 ev/s through Flink with a Tidal operator, 0 lost/dup: "
                f"{'met' if ok else 'not met'} ({ft['events_per_s'] / 100_000:.2f}x the goal{vs})"
            )
        return
    rows = run(
        [b.strip() for b in backends.split(",") if b.strip()],
        n=events,
        batch=batch,
        rate=rate,
        paced_n=paced_events,
        state_cards=state_cards,
        updates=updates,
    )
    load1 = os.getloadavg()
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        typer.echo(f"load average at start {load0[0]:.2f}, at end {load1[0]:.2f}", err=True)
        return
    typer.echo(f"load average at start {load0[0]:.2f}, at end {load1[0]:.2f} (1 min)")

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for r in rows:
        typer.echo(
            f"{r['backend']:>18}: {r['events_per_s']:>14,.0f} ev/s  p50 {ms(r['p50_ms'])} ms  "
            f"p99 {ms(r['p99_ms'])} ms  gap {ms(r['update_gap_ms'])} ms  "
            f"update {ms(r['update_ms'])} ms  lost {r['lost_events']}  "
            f"dup {r['duplicated_events']}"
        )


def _emit(
    rows: list[dict[str, Any]],
    load0: tuple[float, float, float],
    as_json: bool,
    line: Callable[[dict[str, Any]], str],
) -> None:
    """Print benchmark rows (JSON with the load averages, or one `line` per row)."""
    load1 = os.getloadavg()
    if as_json:
        doc = {"load_avg_start": load0, "load_avg_end": load1, "rows": rows}
        typer.echo(json.dumps(doc, indent=1))
        return
    typer.echo(f"load average at start {load0[0]:.2f}, at end {load1[0]:.2f} (1 min)")
    for r in rows:
        typer.echo(line(r))


@cep.command("query")
def query_cmd(
    text: str = typer.Argument(..., help="A SASE query (PATTERN SEQ(...) ...)."),
    events: int = typer.Option(10_000, help="Generated transactions to run it on."),
    seed: int = typer.Option(0),
    cards: int = typer.Option(100),
    rate: float = typer.Option(2.0, help="Transactions per second of event time."),
    limit: int = typer.Option(20, help="Rows to print."),
    events_file: Path | None = typer.Option(
        None, "--events-file", help="JSON lines of events to run it on (instead of generated)."
    ),
    ts_field: str = typer.Option("ts", help="Event-time field (seconds)."),
    type_field: str = typer.Option("type", help="Field that SASE event types match."),
) -> None:
    """Run a SASE query (without SERVERLESS steps) over events; print rows and counts of
    events that could not be evaluated (missing time, partition or attribute)."""
    from tidal.cep import workload
    from tidal.cep.stream import SaseEngine

    pipe = SaseEngine(ts_field=ts_field, type_field=type_field).compile(text)
    if events_file is not None:
        evs = [json.loads(x) for x in events_file.read_text().splitlines() if x.strip()]
    else:
        evs = workload.as_dicts(workload.transactions(events, seed, cards, rate))
    rows = pipe.run(evs)
    for r in rows[:limit]:
        typer.echo(json.dumps(r, default=str))
    bad = pipe.unevaluable()
    typer.echo(f"{len(rows)} matches", err=True)
    if bad:
        typer.echo(f"unevaluable events: {json.dumps(bad)}", err=True)


def _hub(url: str, token_file: Path | None) -> ApiHub:
    from tidal.cep.api import ApiHub  # function-local: keeps httpx/starlette out of start-up

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
    checkpoint_every: int | None = typer.Option(
        None, help="K (events) for this version (0: no checkpoints; default: the manager's)."
    ),
    pop: str | None = typer.Option(None, help="commit | pop for this version."),
    flush_ms: float | None = typer.Option(None, help="F (ms) for this version."),
    max_failures: int | None = typer.Option(None, help="N for this version."),
    network: bool = typer.Option(False, help="The operator needs the network (no netns)."),
    url: str = URL,
    token_file: Path | None = TOKEN_FILE,
) -> None:
    """Register a new version of an operator from a source file; prints the version."""
    if not source.is_file():
        raise TidalError(f"operator source not found: {source}")
    lang = "node" if source.suffix == ".js" else "python"
    opts = {
        "checkpoint_every": checkpoint_every,
        "pop": pop,
        "flush_ms": flush_ms,
        "max_failures": max_failures,
    }
    v = _hub(url, token_file).register(
        name,
        language=lang,
        source=source.read_text(),
        empty_state=empty_state,
        network=network,
        **{k: x for k, x in opts.items() if x is not None},
    )
    typer.echo(json.dumps({"name": name, "version": v}))


@cep.command("request")
def request_cmd(
    name: str = typer.Argument(...),
    version: int | None = typer.Option(None, "--version", help="Start this version."),
    url: str = URL,
    token_file: Path | None = TOKEN_FILE,
) -> None:
    """Start (if needed) and print an operator's queue addresses."""
    typer.echo(json.dumps(_hub(url, token_file).request(name, version)))


@cep.command("push")
def push_cmd(
    name: str = typer.Argument(...),
    source: Path = typer.Argument(
        Path("-"), help="JSON lines or one JSON array of events; - for stdin."
    ),
    chunk: int = typer.Option(1000, help="Events per HTTP request."),
    url: str = URL,
    token_file: Path | None = TOKEN_FILE,
) -> None:
    """Push events to an operator through the node manager (retries on 429)."""
    import time

    text = sys.stdin.read() if str(source) == "-" else source.read_text()
    text = text.strip()
    try:
        evs = (
            json.loads(text)
            if text.startswith("[")
            else [json.loads(x) for x in text.splitlines() if x.strip()]
        )
    except ValueError as e:
        raise TidalError(f"events are not JSON lines or a JSON array: {e}") from None
    hub = _hub(url, token_file)
    sent = retries = 0
    for i in range(0, len(evs), max(1, chunk)):
        part = evs[i : i + chunk]
        while True:
            try:
                sent += hub.push(name, part)
                break
            except TidalError as e:
                if "HTTP 429" not in str(e) or retries > 1000:
                    raise
                retries += 1
                time.sleep(min(0.01 * retries, 1.0))
    typer.echo(json.dumps({"name": name, "accepted": sent, "retries_429": retries}))


@cep.command("tail")
def tail_cmd(
    name: str = typer.Argument(...),
    after: int = typer.Option(0, help="Start after this result id (0: the oldest kept)."),
    count: int = typer.Option(0, help="Stop after this many results (0: never)."),
    idle_s: float = typer.Option(0.0, help="Stop after this many idle seconds (0: never)."),
    url: str = URL,
    token_file: Path | None = TOKEN_FILE,
) -> None:
    """Print an operator's results as JSON lines (Server-Sent Events from the node manager)."""
    hub = _hub(url, token_file)
    params = {"after": after, "limit": count, "idle_s": idle_s}
    with hub.http.stream(
        "GET", f"{hub.url}/v1/operators/{name}/results", params=params, timeout=None
    ) as r:
        if r.status_code >= 400:
            r.read()
            raise TidalError(f"node manager: {r.json().get('error')} (HTTP {r.status_code})")
        kind = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                v = json.loads(line[6:])
                if kind == "gap":
                    typer.echo(f"tidal cep tail: {v['missed']} results were missed", err=True)
                    continue
                for ev in v["events"]:
                    typer.echo(json.dumps(ev))


@cep.command("stats")
def stats_cmd(
    name: str = typer.Argument(...), url: str = URL, token_file: Path | None = TOKEN_FILE
) -> None:
    """Counters of an operator: restarts, parked and the event endpoint's accepted/refused."""
    typer.echo(json.dumps(_hub(url, token_file).stats(name), indent=1))


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
