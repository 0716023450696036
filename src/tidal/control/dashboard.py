"""The live dashboard: a read-only page at ``/dashboard`` polling ``/dashboard/data.json``.

Per stage it shows the arrival rate and the forecast, p50/p99 against the SLO, violations by
cause, cores and replicas in force, variant weights, and the planner's recent decisions. Plain
HTML + JS with inline SVG charts (no CDN: the page works offline).

Access: read-only. Loopback clients need no token; other clients must send the admin bearer
token when one is configured (``Authorization: Bearer ...`` or ``?token=...``).

Mounting (the gateway does it): ``routes = dashboard_routes(feed)``, then add them to the
Starlette app, or mount ``dashboard_app(feed)`` at ``/dashboard``.
"""

from __future__ import annotations

import math
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tidal.control.controller import Controller
from tidal.control.monitor import CAUSES, Monitor

LOOPBACK = {"127.0.0.1", "::1", "localhost", "testclient"}


def _num(x: float | None) -> float | None:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return None
    return round(float(x), 3)


class DashboardFeed:
    """Builds the dashboard's JSON from a Monitor and, when one runs, the Controller.

    Without a controller (plain ``tidal serve``), the feed samples the monitor itself on each
    request at most once per `min_sample_s` (so the page shows live data either way).
    """

    def __init__(
        self,
        monitor: Monitor,
        *,
        slo_ms: float,
        controller: Controller | None = None,
        title: str = "Tidal",
        window: int = 300,
        min_sample_s: float = 0.5,
    ) -> None:
        self.monitor = monitor
        self.controller = controller
        self.slo_ms = slo_ms
        self.title = title
        self.window = window
        self.min_sample_s = min_sample_s
        self._last_sample: float | None = None

    def attach(self, controller: Controller | None) -> None:
        """Show `controller`'s forecasts and decisions (None: monitor only)."""
        self.controller = controller

    def data(self) -> dict[str, Any]:
        now = self.monitor.clock.now()
        if self.controller is None and (
            self._last_sample is None or now - self._last_sample >= self.min_sample_s
        ):
            self.monitor.sample()
            self._last_sample = now
        t0 = now
        stages = []
        for name in self.monitor.stage_order:
            samples = list(self.monitor.samples.get(name, ()))[-self.window :]
            last = samples[-1] if samples else None
            stages.append(
                {
                    "stage": name,
                    "t": [round(s.t - t0, 2) for s in samples],
                    "rate": [_num(s.arrival_rate) for s in samples],
                    "p50_ms": [_num(s.p50_ms) for s in samples],
                    "p99_ms": [_num(s.p99_ms) for s in samples],
                    "violations": {c: [s.violations.get(c, 0) for s in samples] for c in CAUSES},
                    "cores": [_num(s.total_cores) for s in samples],
                    "replicas": [s.replicas for s in samples],
                    "queue": [s.queue_len for s in samples],
                    "now": None
                    if last is None
                    else {
                        "rate": _num(last.arrival_rate),
                        "p50_ms": _num(last.p50_ms),
                        "p99_ms": _num(last.p99_ms),
                        "cores_per_replica": _num(last.cores),
                        "replicas": last.replicas,
                        "queue": last.queue_len,
                        "weights": last.variant_weights,
                    },
                    "totals": _totals(self.monitor, name),
                    "violations_total": {
                        c: sum(s.violations.get(c, 0) for s in samples) for c in CAUSES
                    },
                }
            )
        forecast: dict[str, list[Any]] = {"t": [], "value": []}
        decisions: list[dict[str, Any]] = []
        policy = None
        if self.controller is not None:
            policy = self.controller.policy
            pts = [f for f in self.controller.forecasts if f.t >= t0 - self.window]
            forecast = {
                "t": [round(f.t - t0, 2) for f in pts],
                "value": [_num(f.value) for f in pts],
            }
            decisions = self.controller.decisions.recent(15)
            for d in decisions:
                d["t"] = round(d["t"] - t0, 2)
        return {
            "title": self.title,
            "policy": policy,
            "slo_ms": self.slo_ms,
            "stages": stages,
            "forecast": forecast,
            "decisions": decisions,
        }


def _totals(monitor: Monitor, stage: str) -> dict[str, Any]:
    """Cumulative counters of `stage` since the gateway started (for reports)."""
    c = monitor.last.get(stage)
    if c is None:
        return {}
    return {
        "arrivals": c.arrivals,
        "completions": c.completions,
        "violations": dict(c.violations),
        "core_s": round(c.alloc_core_s, 3),
    }


def _allowed(request: Request, token: str | None) -> bool:
    host = request.client.host if request.client else ""
    if host in LOOPBACK or not token:
        return True
    auth = request.headers.get("authorization", "")
    return auth == f"Bearer {token}" or request.query_params.get("token") == token


def _page() -> str:
    return resources.files("tidal.control").joinpath("dashboard.html").read_text()


def dashboard_routes(
    feed: DashboardFeed, token: str | None = None, prefix: str = "/dashboard"
) -> list[BaseRoute]:
    """Starlette routes: ``{prefix}`` (HTML) and ``{prefix}/data.json``."""
    html = _page()

    async def page(request: Request) -> Response:
        if not _allowed(request, token):
            return JSONResponse({"error": "dashboard needs the admin token"}, status_code=401)
        return HTMLResponse(html)

    async def data(request: Request) -> Response:
        if not _allowed(request, token):
            return JSONResponse({"error": "dashboard needs the admin token"}, status_code=401)
        return JSONResponse(feed.data(), headers={"cache-control": "no-store"})

    return [
        Route(prefix, page, methods=["GET"]),
        Route(prefix + "/", page, methods=["GET"]),
        Route(prefix + "/data.json", data, methods=["GET"]),
    ]


def dashboard_app(feed: DashboardFeed, token: str | None = None) -> Starlette:
    """A standalone ASGI app serving the dashboard at ``/dashboard``."""
    return Starlette(routes=dashboard_routes(feed, token))
