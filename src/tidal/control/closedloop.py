"""Gateway + controller + dashboard in one process: what ``tidal serve --policy P`` runs.

The controller is an asyncio task on the gateway's event loop; it reads the gateway's counters
in process and applies plans through :class:`LocalActuator`. It can be stopped (or crash) and
be started again at any time: the gateway keeps serving the plan in force, and the new
controller starts from ``gateway.current_plan()``.

The ASGI app routes ``/dashboard`` and ``/dashboard/data.json`` to the dashboard and every
other path to the data plane's OIP v2 app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette

from tidal.control.controller import Controller, Forecaster
from tidal.control.dashboard import DashboardFeed, dashboard_routes
from tidal.control.decisions import DecisionLog
from tidal.control.local import GatewayMetrics, LocalActuator
from tidal.control.monitor import Monitor
from tidal.core.errors import TidalError
from tidal.core.profile import ProfileSet, VariantProfile
from tidal.planners.base import Capacity, Planner, StageCandidates

log = logging.getLogger("tidal.control")


@dataclass
class LoopOptions:
    """How the controller runs. `policy` None = no controller (dashboard only)."""

    policy: str | None = None
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    forecast: str | None = None
    tick_s: float = 1.0
    decisions_path: str | Path | None = None
    capacity: Capacity | None = None
    best_effort: bool = False
    profile: ProfileSet | None = None
    substrate: str = "local"
    address: str | None = None
    # Ray: the planners see this many nodes when the cluster can grow (KubeRay autoscaler);
    # replicas beyond the nodes present stay pending until a node joins.
    ray_max_nodes: int | None = None
    calibrate: bool = True


def load_profiles(path: str | None = None) -> ProfileSet:
    """`path`'s ProfileSet, else the reference profile of this machine, else an empty set
    (variants then fall back to the gateway's calibration; see `stage_candidates`)."""
    if path:
        return ProfileSet.load(path)
    try:
        from tidal.profiling import load_reference

        return load_reference()
    except (ImportError, TidalError) as e:
        log.warning("no reference profile (%s); using the gateway's calibration", e)
        return ProfileSet()


def stage_candidates(gateway: Any, profiles: ProfileSet) -> tuple[StageCandidates, ...]:
    """Candidates per gateway stage (pipeline order), with their profiles.

    A variant missing from `profiles` falls back to the fit the gateway calibrated on its
    replicas (accuracy from the catalog); a variant with neither is left out (logged). A stage
    left with no candidate is a TidalError naming it.
    """
    from tidal.models.catalog import get_variant

    out = []
    for name, stage in gateway.stages.items():
        vs: list[VariantProfile] = []
        for v in stage.allowed:
            if v in profiles.variants:
                vs.append(profiles.variants[v])
            elif v in getattr(stage, "fits", {}):
                spec = get_variant(v)
                vs.append(
                    VariantProfile(
                        name=v,
                        task=spec.task,
                        accuracy=spec.accuracy,
                        fit=stage.fits[v],
                    )
                )
                log.warning("variant %s: no profile; using the gateway's calibrated fit", v)
            else:
                log.warning("variant %s: no profile and no calibration; planners skip it", v)
        if not vs:
            raise TidalError(
                f"stage {name!r}: no profile for any of its variants {stage.allowed}; "
                f"profile has {sorted(profiles.variants)} (run `tidal profile`)"
            )
        out.append(StageCandidates(name, tuple(vs)))
    return tuple(out)


def make_planner(policy: str, **kwargs: Any) -> Planner:
    """The policy from the registry, wrapped in the planners' `Governed` wrapper."""
    from tidal.planners import Governed, create

    return Governed(create(policy, **kwargs))


def make_forecaster(name: str | None, setting: str = "ipa") -> Forecaster | None:
    """A `tidal.forecast` predictor as a controller forecaster (None: plan on history)."""
    if not name:
        return None
    from tidal.forecast import create

    pred = create(name, setting)

    def f(history: Any) -> float | None:
        return float(pred.predict(np.asarray(history, dtype=float)))

    return f


class ClosedLoop:
    """Owns the gateway's controller task and the dashboard feed."""

    def __init__(
        self,
        gateway: Any,
        oip_app: Any,
        slo_ms: float,
        options: LoopOptions,
        ray_factory: Any = None,
    ) -> None:
        self.gateway = gateway
        self.ray_factory = ray_factory
        self.oip_app = oip_app
        self.options = options
        self.slo_ms = slo_ms
        self.monitor = Monitor(GatewayMetrics(gateway), gateway.clock)
        self.feed = DashboardFeed(self.monitor, slo_ms=slo_ms, title="Tidal")
        self.controller: Controller | None = None
        self.decisions = DecisionLog(options.decisions_path)
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._dash = Starlette(
            routes=dashboard_routes(
                self.feed,
                token=_token(gateway),
                secure_cookie=getattr(gateway.config, "tls_certfile", None) is not None,
            ),
        )

    # ------------------------------------------------------------------ controller
    def start_controller(
        self, policy: str | None = None, planner: Planner | None = None, **kwargs: Any
    ) -> Controller:
        """Start (or restart) the controller task on the running loop; returns it. It starts
        from the plan in force. `planner` overrides the registry lookup of `policy` (it is
        used as given: wrap it in `Governed` yourself). Call from the gateway's event loop."""
        if self._task is not None and not self._task.done():
            raise TidalError("a controller is already running; stop it first")
        name = policy or (planner.name if planner else None) or self.options.policy
        if not name:
            raise TidalError("no policy given: pass --policy NAME")
        kw = {**self.options.policy_kwargs, **kwargs}
        profiles = self.options.profile or load_profiles(self.gateway.config.profile)
        actuator: LocalActuator
        if self.ray_factory is not None:
            from tidal.control.ray_substrate import RayActuator

            actuator = RayActuator(self.gateway, self.ray_factory)
        else:
            actuator = LocalActuator(self.gateway, self.options.capacity)
        ctl = Controller(
            planner if planner is not None else make_planner(name, **kw),
            actuator,
            self.monitor,
            stage_candidates(self.gateway, profiles),
            self.slo_ms,
            self.gateway.clock,
            forecaster=make_forecaster(self.options.forecast),
            decisions=self.decisions,
            apply_best_effort=self.options.best_effort,
            policy=name,
            calibrate=self.options.calibrate,
        )
        self.controller = ctl
        self.feed.attach(ctl)
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            ctl.run(self.options.tick_s, self._stop)
        )
        log.info("controller started: policy %s", name)
        return ctl

    async def stop_controller(self, crash: bool = False) -> None:
        """Stop the controller (cleanly, or `crash`: cancel it mid-flight). Serving goes on."""
        task, self._task = self._task, None
        self.feed.attach(None)
        if task is None:
            return
        if crash or self._stop is None:
            task.cancel()
        else:
            self._stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @property
    def controller_running(self) -> bool:
        return self._task is not None and not self._task.done()

    # ------------------------------------------------------------------ ASGI
    def at_headers(self, scope: dict[str, Any]) -> Any:
        """The data plane's admission at the headers (tidal.dataplane.server's hook)."""
        hook = getattr(self.oip_app, "at_headers", None)
        return None if hook is None else hook(scope)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/dashboard"):
            await self._dash(scope, receive, send)
            return
        if scope["type"] == "lifespan":
            await self.oip_app(scope, self._lifespan_receive(receive), self._lifespan_send(send))
            return
        await self.oip_app(scope, receive, send)

    def _lifespan_send(self, send: Any) -> Callable[[dict[str, Any]], Awaitable[None]]:
        async def snd(msg: dict[str, Any]) -> None:
            if msg["type"] == "lifespan.startup.complete" and self.options.policy:
                self.start_controller()
            await send(msg)

        return snd

    def _lifespan_receive(self, receive: Any) -> Callable[[], Awaitable[dict[str, Any]]]:
        async def rcv() -> dict[str, Any]:
            msg: dict[str, Any] = await receive()
            if msg["type"] == "lifespan.shutdown":
                await self.stop_controller()  # before the gateway stops its replicas
            return msg

        return rcv


def _token(gateway: Any) -> str | None:
    cfg = getattr(gateway, "config", None)
    fn = getattr(cfg, "admin_token", None)
    return fn() if callable(fn) else None


def build_closed_loop(config: Any, options: LoopOptions) -> ClosedLoop:
    """The composed ASGI app (OIP v2 + admin + metrics + dashboard) with its controller, on
    the local substrate (worker processes here) or on Ray (`options.substrate == "ray"`)."""
    from tidal.dataplane.gateway import Gateway
    from tidal.dataplane.http import OIPApp

    factory = ray_factory(options)
    gateway = Gateway(config, factory=factory) if factory is not None else Gateway(config)
    return ClosedLoop(gateway, OIPApp(gateway), config.default_slo_ms, options, factory)


def ray_factory(options: LoopOptions) -> Any:
    """The Ray executor factory for `options`, or None for the local substrate."""
    if options.substrate == "local":
        return None
    if options.substrate != "ray":
        raise TidalError(f"unknown substrate {options.substrate!r}; valid: local, ray")
    from tidal.control.ray_substrate import RayFactory

    cpn = options.capacity.cores_per_node if options.capacity else None
    return RayFactory(options.address, cpn, autoscale_max_nodes=options.ray_max_nodes)
