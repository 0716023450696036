"""`tidal serve CONFIG.yaml` and `tidal bench dataplane`.

Composable for other areas (the closed-loop controller wires itself in through these):

    app, gateway = build_app(config)           # ASGI app + in-process Gateway, not started
    run(config, on_start=callback)             # uvicorn; callback(gateway) once warm, on the
                                               # gateway's event loop (may return a coroutine)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import typer

from tidal.config.serve import ServeConfig

OnStart = Callable[[Any], Any]
OnBuild = Callable[[Any, Any], None]


def build_app(
    config: ServeConfig, factory: Any = None, on_build: OnBuild | None = None
) -> tuple[Any, Any]:
    """The ASGI app (OIP v2 + admin + metrics) and its Gateway. Startup happens in the ASGI
    lifespan (uvicorn) or by awaiting `gateway.start()` yourself. `on_build(gateway, app)` is
    called once both exist, before anything starts (the model repository primes fits there)."""
    from tidal.control.serve_hook import wrap  # mounts /dashboard (closed-loop issue)
    from tidal.dataplane.gateway import Gateway
    from tidal.dataplane.http import OIPApp

    gateway = Gateway(config, factory=factory) if factory is not None else Gateway(config)
    app = wrap(OIPApp(gateway), gateway, factory)
    if on_build is not None:
        on_build(gateway, app)
    return app, gateway


def run(
    config: ServeConfig,
    on_start: OnStart | None = None,
    log_level: str = "warning",
    factory: Any = None,
    on_build: OnBuild | None = None,
) -> None:
    """Serve `config` until SIGINT/SIGTERM with Tidal's HTTP server (tidal.dataplane.server:
    httptools on uvloop, the connection limits of `config.limits`, TLS when configured).
    `on_start(gateway)` runs on the gateway's loop once it is warm and the port listens."""
    from tidal.dataplane.frontend import serve  # server.serve, or N front ends (frontends: N)

    app, gateway = build_app(config, factory, on_build)

    def started() -> Any:
        return on_start(gateway) if on_start is not None else None

    serve(app, config, on_start=started, log_level=log_level)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `serve` to `app` and `dataplane` to `bench`."""

    @app.command("serve")
    def serve(
        config: str | None = typer.Argument(
            None,
            help="Serving config YAML (see examples/*.yaml); optional with --model-repository.",
        ),
        model_repository: str | None = typer.Option(
            None,
            "--model-repository",
            help="Serve every model of this repository (<model>/<version>/model.onnx); "
            "no YAML needed (docs/models.md).",
        ),
        auto_profile_budget: float | None = typer.Option(
            None, help="Seconds bounding each repository version's automatic quick profile."
        ),
        no_auto_profile: bool = typer.Option(
            False, "--no-auto-profile", help="Serve unprofiled versions on the estimate only."
        ),
        grpc_port: int | None = typer.Option(None, help="OIP v2 gRPC port (default 8001)."),
        host: str | None = typer.Option(None, help="Override the config's host."),
        port: int | None = typer.Option(None, help="Override the config's port."),
        frontends: int | None = typer.Option(
            None, help="HTTP front-end processes (config `frontends`; 1 = in-process HTTP)."
        ),
        policy: str | None = typer.Option(
            None,
            help="Autoscaling policy: controller added by the closed-loop issue "
            "(this option is a hook; without a controller the plan stays as configured).",
        ),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Log data-plane events."),
        substrate: str = typer.Option(
            "local", help="Where replicas run: local (worker processes) or ray (Ray actors)."
        ),
        address: str | None = typer.Option(None, help="Ray cluster address (--substrate ray)."),
        ray_max_nodes: int | None = typer.Option(
            None,
            min=1,
            help="--substrate ray with an autoscaling cluster (KubeRay): plan for up to this "
            "many nodes; replicas beyond the nodes present stay pending until one joins.",
        ),
        forecast: str | None = typer.Option(
            None, help="Load predictor for the policy: last, max, ewma, lstm (tidal.forecast)."
        ),
        decisions: str | None = typer.Option(None, help="Append planner decisions (JSON lines)."),
        policy_option: list[str] = typer.Option(
            [],
            "--policy-option",
            help="KEY=VALUE planner option (YAML value), e.g. variant=high (themis: the most "
            "accurate version); repeatable.",
        ),
    ) -> None:
        """Serve models and pipelines over the Open Inference Protocol v2."""
        from tidal.cli.serve_repo import RepoServing, base_config

        cfg = base_config(config, model_repository)
        updates: dict[str, Any] = {}
        if host is not None:
            updates["host"] = host
        if port is not None:
            updates["port"] = port
        if grpc_port is not None:
            updates["grpc_port"] = grpc_port
        if frontends is not None:
            updates["frontends"] = frontends
        if auto_profile_budget is not None:
            updates["auto_profile_budget_s"] = auto_profile_budget
        if no_auto_profile:
            updates["auto_profile"] = False
        if updates:
            cfg = cfg.model_validate({**cfg.model_dump(), **updates})
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
        repo = RepoServing(cfg)  # resolves variants and the repository (errors name fields)
        cfg = repo.config
        on_start: OnStart | None = None
        if policy is not None:
            from tidal.cli.serve_repo import policy_options

            on_start = repo.policy_hook(
                _policy_hook(
                    policy,
                    forecast=forecast,
                    decisions_path=decisions,
                    policy_kwargs=policy_options(policy_option) or None,
                )
            )
        from tidal.control.serve_hook import substrate_factory  # closed-loop issue

        factory = substrate_factory(substrate, address, ray_max_nodes)

        def announce(gw: Any) -> None:
            typer.echo(
                f"tidal: serving {sorted(gw.models)} on http://{cfg.host}:{cfg.port} "
                f"(plan: {gw.current_plan().model_dump_json() if gw.current_plan() else None})"
            )

        def both(gw: Any) -> Any:
            announce(gw)
            repo.started(gw)
            return on_start(gw) if on_start is not None else None

        run(
            cfg,
            on_start=both,
            log_level="info" if verbose else "warning",
            factory=factory,
            on_build=repo.built,
        )

    @bench.command("dataplane")
    def bench_dataplane(
        json_out: bool = typer.Option(False, "--json", help="Print JSON only."),
        duration: float = typer.Option(8.0, help="Seconds of load per measurement."),
        connections: int = typer.Option(16, help="wrk connections for throughput runs."),
        skip_ray: bool = typer.Option(False, help="Do not run Ray Serve."),
        workloads: str = typer.Option("noop,resnet18", help="Comma-separated workloads."),
        protocols: bool = typer.Option(
            True, help="Also REST JSON / REST binary / gRPC side by side, and Triton's gRPC."
        ),
        only_protocols: bool = typer.Option(False, help="Only the protocol comparison."),
    ) -> None:
        """Tidal vs Ray Serve vs a bare ASGI app under the same wrk load, then REST JSON, REST
        binary and gRPC side by side and Tidal's gRPC vs Triton's (figures, JSON)."""
        from tidal.bench.dataplane import run_bench
        from tidal.bench.dataplane_protocols import run_protocols

        names = [w.strip() for w in workloads.split(",") if w.strip()]
        echo = None if json_out else typer.echo
        if only_protocols:
            out = run_protocols(duration, names, echo)
        else:
            out = run_bench(duration, connections, not skip_ray, names, echo)
            if protocols:
                out["protocols"] = run_protocols(duration, names, echo)
        import json

        typer.echo(json.dumps(out, indent=2))


def _policy_hook(policy: str, **options: Any) -> OnStart:
    """Start the closed-loop controller when the control area provides one."""
    try:
        from tidal.control import serve_hook
    except ImportError:
        from tidal.core.errors import TidalError

        raise TidalError(
            f"--policy {policy!r}: no controller available (added by the closed-loop issue)"
        ) from None

    def hook(gw: Any) -> Any:
        return serve_hook.start(gw, policy, **options)

    return hook


__all__ = ["build_app", "register", "run"]
