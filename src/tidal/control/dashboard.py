"""The live dashboard: a read-only page at ``/dashboard`` polling ``/dashboard/data.json``.

Per stage it shows the arrival rate and the forecast, p50/p99 against the SLO, violations by
cause, cores and replicas in force, variant weights, and the planner's recent decisions. Plain
HTML + JS with inline SVG charts (no CDN: the page works offline).

Access: read-only, and only with the admin token, from every client (no loopback bypass: a
reverse proxy on the host would otherwise open it to the world). Either the header
``Authorization: Bearer <token>``, or the HttpOnly session cookie that ``POST
{prefix}/login`` (the form at ``GET {prefix}/login``) sets. The cookie holds an HMAC of the
token, never the token; every comparison is ``hmac.compare_digest``. Query-string tokens are
not accepted (they end up in logs and browser history). Without a configured token the
dashboard answers 403 to everyone.

Mounting (the gateway does it): ``routes = dashboard_routes(feed)``, then add them to the
Starlette app, or mount ``dashboard_app(feed)`` at ``/dashboard``.
"""

from __future__ import annotations

import hashlib
import hmac
import html as html_lib
import math
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from tidal.control.controller import Controller
from tidal.control.monitor import CAUSES, Monitor

COOKIE = "tidal_dashboard"
MAX_LOGIN_BODY = 4096
_LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Tidal dashboard: sign in</title></head><body style="font:14px system-ui;margin:24px">
<h1 style="font-size:18px">Tidal dashboard</h1><p>{message}</p>
<form method="post" action="{action}"><label>Admin token
<input type="password" name="token" autocomplete="current-password" autofocus></label>
<button type="submit">Sign in</button></form></body></html>"""


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


def session_value(token: str) -> str:
    """The cookie value for `token`: an HMAC of it (the token itself never leaves the server)."""
    return hmac.new(token.encode(), b"tidal-dashboard-session-v1", hashlib.sha256).hexdigest()


def authorized(request: Request, token: str | None) -> bool:
    """True iff `request` carries the admin token (bearer header) or a valid session cookie.
    False for everyone when no token is configured. Constant-time comparisons only."""
    if not token:
        return False
    auth = request.headers.get("authorization", "").encode()
    if auth and hmac.compare_digest(auth, b"Bearer " + token.encode()):
        return True
    cookie = request.cookies.get(COOKIE, "").encode()
    return bool(cookie) and hmac.compare_digest(cookie, session_value(token).encode())


def _page() -> str:
    return resources.files("tidal.control").joinpath("dashboard.html").read_text()


def dashboard_routes(
    feed: DashboardFeed,
    token: str | None = None,
    prefix: str = "/dashboard",
    secure_cookie: bool = False,
) -> list[BaseRoute]:
    """Starlette routes: ``{prefix}`` (HTML), ``{prefix}/data.json`` and ``{prefix}/login``
    (GET: the form; POST: check the token, set the HttpOnly cookie, 303 to the page).
    `secure_cookie`: mark the cookie Secure (set it when the gateway serves TLS)."""
    html = _page()
    login_path = prefix + "/login"

    def refuse(json: bool) -> Response:
        if not token:
            return JSONResponse(
                {"error": "dashboard disabled: no admin token configured (TIDAL_TOKEN)"},
                status_code=403,
            )
        if json:
            return JSONResponse(
                {"error": "dashboard needs the admin token"},
                status_code=401,
                headers={"www-authenticate": "Bearer"},
            )
        return RedirectResponse(login_path, status_code=303)

    def login_form(message: str, status: int = 200) -> Response:
        body = _LOGIN_PAGE.format(message=html_lib.escape(message), action=login_path)
        return HTMLResponse(body, status_code=status, headers={"cache-control": "no-store"})

    async def page(request: Request) -> Response:
        if not authorized(request, token):
            return refuse(json=False)
        return HTMLResponse(html, headers={"cache-control": "no-store"})

    async def data(request: Request) -> Response:
        if not authorized(request, token):
            return refuse(json=True)
        return JSONResponse(feed.data(), headers={"cache-control": "no-store"})

    async def login(request: Request) -> Response:
        if not token:
            return refuse(json=True)
        if request.method == "GET":
            return login_form("Sign in with the gateway's admin token.")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BODY:
                return login_form("Request too large.", 413)
        given = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0].encode()
        if not given or not hmac.compare_digest(given, token.encode()):
            return login_form("Wrong token.", 401)
        resp = RedirectResponse(prefix, status_code=303)
        resp.set_cookie(
            COOKIE,
            session_value(token),
            path=prefix,
            httponly=True,
            samesite="lax",
            secure=secure_cookie,
        )
        return resp

    return [
        Route(prefix, page, methods=["GET"]),
        Route(prefix + "/", page, methods=["GET"]),
        Route(prefix + "/data.json", data, methods=["GET"]),
        Route(login_path, login, methods=["GET", "POST"]),
    ]


def dashboard_app(feed: DashboardFeed, token: str | None = None) -> Starlette:
    """A standalone ASGI app serving the dashboard at ``/dashboard``."""
    return Starlette(routes=dashboard_routes(feed, token))
