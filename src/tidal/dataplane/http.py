"""The gateway's HTTP face: a raw ASGI app speaking the Open Inference Protocol v2 (REST).

Routes (the served OpenAPI document, `GET /v2/openapi.json`, lists them with their schemas):
`GET /v2`, `GET /v2/health/live|ready`, `GET /v2/models/{m}[/versions/{v}]`,
`GET .../ready`, `GET .../config`, `GET .../stats`, `GET /v2/models/stats`,
`POST .../infer` (JSON tensors; the binary tensor extension with `Inference-Header-Content-Length`
for inputs and requested outputs; the classification extension), `POST /v2/repository/index`,
`POST /v2/repository/models/{m}/load|unload` (bearer token), `GET /metrics` (Prometheus),
`GET|PUT /admin/plan`, `GET /admin/stats` and `GET /admin/refusals[?reset=true]` (the
server-side refusal latency, `tidal.dataplane.early.RefusalTimes`) (bearer token).

A request's SLO: the tighter of `parameters.slo_ms` in the body and the `x-tidal-slo-ms`
header when both are given, either alone, else the model's default. Admission runs up to three
times, each refusing only what the next would refuse too (`tidal.dataplane.early`): at the
headers (`OIPApp.at_headers`, called by `tidal.dataplane.server` before any body byte is read),
after the body before its decode, and in the scheduler after the decode.

Status codes: 400 malformed body, unknown/missing input or output, wrong datatype or shape,
bad `slo_ms`, NaN/inf; 401 missing or wrong token; 403 admin disabled (no token configured);
404 unknown model, version or route; 405 wrong method (with `Allow`; TRACE always); 409 plan
rejected; 413 body (decoded) above `max_body_bytes`; 415 unknown Content-Encoding; 503 refused
(JSON reason + `Retry-After`); 504 expired; 5xx worker failure. Every error body is JSON
`{"error": "..."}` naming the problem. The gRPC face (`tidal.dataplane.grpc_server`) starts and
stops with this app's lifespan when enabled.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Coroutine, MutableMapping
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError

from tidal.core.clock import MonotonicClock
from tidal.core.errors import TidalError, first_error
from tidal.core.plan import Plan
from tidal.dataplane import oip_serve
from tidal.dataplane.disconnect import ClientGone, disconnect_hook, until_disconnect
from tidal.dataplane.early import (
    RefusalTimes,
    early_refusal,
    headers_priced,
    headers_refusal,
    row_bytes,
    rows_at_least,
)
from tidal.dataplane.gateway import Gateway
from tidal.dataplane.http_body import read_body
from tidal.dataplane.infer_rest import (
    check_header_len,
    error_answer,
    infer_answer,
    infer_headers,
    internal_answer,
    refusal_answer,
    request_slo,
    with_content_type,
)
from tidal.dataplane.oip import OIPError, parse_rest, parse_slo, sig_of
from tidal.dataplane.plancheck import PlanRejected, check_admin_plan, zero_reason
from tidal.dataplane.planstatus import plan_status
from tidal.dataplane.replica import Refused
from tidal.dataplane.tensors import as_named

log = logging.getLogger("tidal.dataplane")
Scope = MutableMapping[str, Any]
_JSON = [(b"content-type", b"application/json")]
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
HTTPError = OIPError  # the name earlier callers import
__all__ = ["HTTPError", "OIPApp", "parse_slo"]


def _first_byte(scope: Scope, gw: Gateway) -> float | None:
    """The request's arrival when the gateway runs on `time.monotonic()`, else None (the
    gateway uses its now): its first-byte time (tidal.dataplane.server puts it in the scope)
    less the wait in the socket the server estimated for it (`tidal.socket_wait_s`,
    `tidal.dataplane.looplag`; 0 when absent). The deadline counts from there."""
    if not isinstance(gw.clock, MonotonicClock):
        return None
    t = _stamp(scope, "tidal.t_first_byte")
    wait = _stamp(scope, "tidal.socket_wait_s")
    return t - wait if t is not None and wait is not None else t


def _stamp(scope: Scope, key: str) -> float | None:
    """A float time the server put in the scope's state under `key`, else None."""
    t = (scope.get("state") or {}).get(key)
    return t if isinstance(t, float) else None


def _allow(methods: str) -> OIPError:
    return OIPError(
        405, f"method not allowed; allowed: {methods}", [*_JSON, (b"allow", methods.encode())]
    )


class OIPApp:
    """The ASGI application (see the module docstring)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.cfg = gateway.config
        self.registry = CollectorRegistry()
        self.registry.register(gateway.collector())
        self.grpc: Any = None  # tidal.dataplane.grpc_server.GRPCServer once started
        self._openapi: bytes | None = None
        self.refusals = RefusalTimes()
        self._per_row: dict[str, int | None] = {}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.gw.start()
                    await self.start_grpc()
                except Exception as e:
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.stop_grpc()
                await self.gw.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def start_grpc(self) -> int | None:
        """Start the OIP gRPC face when the config enables it; returns its port (or None).

        An explicit `grpc_port` that cannot be bound fails the startup (OSError). The default
        (8001) that is taken, e.g. by a second server on this machine, is logged and REST
        serves alone: the default must not stop a server whose config never asked for gRPC."""
        if not getattr(self.cfg, "grpc", True):
            return None
        explicit = getattr(self.cfg, "grpc_port", None)
        port = explicit if explicit is not None else (0 if self.cfg.port == 0 else 8001)
        from tidal.dataplane.grpc_server import GRPCServer  # grpcio only when gRPC is served

        self.grpc = GRPCServer(self.gw, self.cfg.host, port)
        try:
            bound = await self.grpc.start()
        except (OSError, RuntimeError) as e:
            self.grpc = None
            if explicit is not None:
                raise OSError(f"gRPC: cannot bind {self.cfg.host}:{port} (grpc_port): {e}") from e
            log.warning("OIP v2 gRPC not served: default port %d is taken (%s); set grpc_port "
                        "or --grpc-port", port, e)  # fmt: skip
            return None
        log.warning("OIP v2 gRPC listening on %s:%d", self.cfg.host, bound)
        return bound

    async def stop_grpc(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop()
            self.grpc = None

    async def _http(self, scope: Scope, receive: Any, send: Any) -> None:
        status, body, headers = await self._answer(scope, self._route(scope, receive))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self._record_refusal(scope)

    async def _answer(self, scope: Scope, route: Coroutine[Any, Any, Any]) -> Answer:
        """`route`'s answer with its Content-Type: an OIPError as its error answer, any other
        exception as a 500 naming it (a bug must not take the server down)."""
        try:
            status, body, headers = await route
        except OIPError as e:
            status, body, headers = error_answer(e)
        except Exception as e:
            log.exception("internal error on %s", scope.get("path"))
            status, body, headers = internal_answer(e)
        return status, body, with_content_type(headers)

    def _record_refusal(self, scope: Scope) -> None:
        """Record where the answered request was refused, if it was (`tidal.refused`)."""
        where = (scope.get("state") or {}).get("tidal.refused")
        if where is not None:
            self.refusals.record(
                where, _stamp(scope, "tidal.t_headers"), _stamp(scope, "tidal.t_first_byte")
            )

    def at_headers(self, scope: Scope) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """Admission before the body (`tidal.dataplane.server` calls this once the request
        line and headers are parsed; `scope` has method, path, headers and state): the
        response (status, headers, body) for an inference request the first stage would
        refuse whatever its body says (`tidal.dataplane.early.headers_refusal`), else None
        (the request takes the normal path). Only `POST /v2/models/{m}/infer` of a served
        model; a pinned version, a bad header, or an idle lane is never refused here."""
        path: str = scope["path"]
        if scope["method"] != "POST" or not path.startswith("/v2/models/"):
            return None
        name = path[len("/v2/models/") : -len("/infer")] if path.endswith("/infer") else ""
        info = self.gw.models.get(name) if name and "/" not in name else None
        if info is None:
            return None
        slo_header: bytes | None = None
        length = header_len = None
        encoded = False
        try:
            for k, v in scope["headers"]:
                if k == b"x-tidal-slo-ms":
                    slo_header = v
                elif k == b"content-length":
                    length = int(v)
                elif k == b"inference-header-content-length":
                    header_len = int(v)
                elif k == b"content-encoding" or k == b"transfer-encoding":
                    encoded = encoded or v.strip().lower() not in (b"identity", b"")
        except ValueError:
            return None  # the full path names the bad header (400)
        if name not in self._per_row:
            self._per_row[name] = row_bytes(sig_of(info).inputs)
        rows = rows_at_least(length, header_len, encoded, self._per_row[name])
        if slo_header is None and rows <= 1 and not headers_priced(self.gw, name):
            return None  # the lazy case: no CPU-clock system call (issue 14)
        cpu0 = time.thread_time()
        ans = headers_refusal(
            self.gw, name, slo_header, rows, _first_byte(scope, self.gw), self.cfg.max_slo_ms
        )
        if ans is None:
            return None
        status, body, headers = ans
        self.refusals.record_cpu(time.thread_time() - cpu0)
        self.refusals.record(
            "headers", _stamp(scope, "tidal.t_headers"), _stamp(scope, "tidal.t_first_byte")
        )
        return status, [*_JSON, *headers], body

    def direct(self, scope: Scope, body: bytes) -> Coroutine[Any, Any, Answer] | None:
        """The server's direct path (`tidal.dataplane.server`, issue 14: no ASGI messages
        and half the coroutine layers per request): for `POST /v2/models/{m}/infer` of a
        served model, no version in the URL, no Content-Encoding and a body within the cap,
        a coroutine answering (status, body, headers) exactly as the ASGI call would (the
        same checks, admission, deadline, disconnect cancellation and refusal records);
        None for every other request (the server then makes the ASGI call). The answer's
        headers never carry Content-Length or Connection (the server frames it)."""
        path: str = scope["path"]
        if scope["method"] != "POST" or not path.endswith("/infer"):
            return None
        if not path.startswith("/v2/models/") or len(body) > self.cfg.max_body_bytes:
            return None
        name = path[11:-6]  # len("/v2/models/"), len("/infer")
        info = self.gw.models.get(name) if name and "/" not in name else None
        if info is None:
            return None
        for k, _v in scope["headers"]:
            if k == b"content-encoding":  # read_body's decoding: the ASGI path
                return None
        return self._direct(scope, body, info)

    async def _direct(self, scope: Scope, body: bytes, info: Any) -> Answer:
        ans = await self._answer(scope, self._infer_body(scope, None, body, info, None, None))
        self._record_refusal(scope)
        return ans

    async def _body(self, scope: Scope, receive: Any) -> bytes:
        return await read_body(scope, receive, self.cfg.max_body_bytes)

    # ------------------------------------------------------------------ routing
    async def _route(self, scope: Scope, receive: Any) -> tuple[int, bytes, list[Any]]:
        path: str = scope["path"]
        method: str = scope["method"]
        if method == "TRACE":
            raise _allow("GET, POST, PUT, HEAD")
        if path.startswith("/v2/models/"):
            return await self._model_route(path, method, scope, receive)
        if path.startswith("/v2/repository/"):
            return await self._repository(path, method, scope, receive)
        get_routes = {
            "/v2/health/live": lambda: (200, b'{"live":true}', []),
            "/v2/health/ready": self._server_ready,
            "/v2": lambda: (200, orjson.dumps(oip_serve.server_metadata()), []),
            "/v2/": lambda: (200, orjson.dumps(oip_serve.server_metadata()), []),
            "/v2/openapi.json": lambda: (200, self.openapi(), []),
            "/metrics": lambda: (
                200,
                generate_latest(self.registry),
                [(b"content-type", CONTENT_TYPE_LATEST.encode())],
            ),
        }
        route = get_routes.get(path)
        if route is not None:
            if method not in ("GET", "HEAD"):
                raise _allow("GET, HEAD")
            return route()
        if path.startswith("/admin/"):
            self._check_token(scope)
            return await self._admin(path, method, scope, receive)
        raise OIPError(404, f"no route {method} {path}")

    def _server_ready(self) -> tuple[int, bytes, list[Any]]:
        ok = self.gw.ready and all(oip_serve.ready(self.gw, i) for i in self.gw.models.values())
        return (200 if ok else 503), orjson.dumps({"ready": ok}), []

    async def _model_route(
        self, path: str, method: str, scope: Scope, receive: Any
    ) -> tuple[int, bytes, list[Any]]:
        rest = path[len("/v2/models/") :].split("/")
        if rest == ["stats"]:
            if method not in ("GET", "HEAD"):
                raise _allow("GET, HEAD")
            infos = list(self.gw.models.values())
            return 200, orjson.dumps(oip_serve.model_stats(self.gw, infos)), []
        name, version = rest[0], None
        if len(rest) >= 3 and rest[1] == "versions":
            version = rest[2]
            rest = [name, *rest[3:]]
        if len(rest) > 2 or (version is not None and not version):
            raise OIPError(404, f"no route {method} {path}")
        action = rest[1] if len(rest) == 2 else ""
        if action not in ("", "ready", "infer", "config", "stats"):
            raise OIPError(404, f"no route {method} {path}")
        if action == "ready" and name not in self.gw.models:  # unloaded repository model
            if method not in ("GET", "HEAD"):
                raise _allow("GET, HEAD")
            _, ok = oip_serve.model_ready(self.gw, name, version)
            return 503, orjson.dumps({"name": name, "ready": ok}), []
        info, variant = oip_serve.resolve(self.gw, name, version)
        if action == "infer":
            if method != "POST":
                raise _allow("POST")
            return await self._infer(scope, receive, info, variant)
        if method not in ("GET", "HEAD"):
            raise _allow("GET, HEAD")
        if action == "ready":
            ok = oip_serve.ready(self.gw, info, variant)
            out: dict[str, Any] = {"name": name, "ready": ok}
            if not ok and (why := zero_reason(self.gw.current_plan(), info.stages)):
                out["reason"] = why
            return (200 if ok else 503), orjson.dumps(out), []
        if action == "config":
            return 200, orjson.dumps(oip_serve.model_config(self.gw, info)), []
        if action == "stats":
            return 200, orjson.dumps(oip_serve.model_stats(self.gw, [info])), []
        return 200, orjson.dumps(oip_serve.model_metadata(self.gw, info)), []

    # ------------------------------------------------------------------ inference
    async def _infer(
        self, scope: Scope, receive: Any, info: Any, variant: str | None
    ) -> tuple[int, bytes, list[Any]]:
        hdrs = infer_headers(scope["headers"])  # a bad header length: 400 before the body
        body = await self._body(scope, receive)
        return await self._infer_body(scope, receive, body, info, variant, hdrs)

    async def _infer_body(
        self,
        scope: Scope,
        receive: Any,
        body: bytes,
        info: Any,
        variant: str | None,
        hdrs: tuple[int | None, bytes | None] | None,
    ) -> tuple[int, bytes, list[Any]]:
        """The infer request once its body is read (`receive`: None on the direct path,
        where the server's disconnect hook is always in the scope; `hdrs`: `infer_headers`,
        read here when None)."""
        header_len, slo_header = infer_headers(scope["headers"]) if hdrs is None else hdrs
        check_header_len(header_len, body)
        t_first = _first_byte(scope, self.gw)
        if variant is None:  # priced before the decode (issue 13: tidal.dataplane.early)
            early = early_refusal(
                self.gw, info.name, body, header_len, slo_header, t_first, self.cfg.max_slo_ms,
            )  # fmt: skip
            if early is not None:
                scope.setdefault("state", {})["tidal.refused"] = "body"
                return early
        sig = sig_of(info)
        req = parse_rest(body, header_len, sig)
        slo = request_slo(req, slo_header, self.cfg.max_slo_ms)
        hook = disconnect_hook(scope)
        if hook is not None and variant is None:  # the server's hook (the usual case)
            return await self._infer_watched(scope, info, req, sig, slo, t_first, hook)
        try:  # a client that hangs up cancels its request (tidal.dataplane.disconnect)
            named, res, sig = await until_disconnect(
                receive, oip_serve.infer(self.gw, info, req, variant, slo, t_first), hook
            )
        except ClientGone:
            return 499, b'{"error": "client closed the connection"}', []
        except OIPError as e:
            if not hasattr(e, "cause"):
                raise
            if e.status == 503:
                scope.setdefault("state", {})["tidal.refused"] = "admission"
            return refusal_answer(e)
        default = self.gw.config.default_slo_ms
        return infer_answer(info.name, sig, named, req, res, slo if slo is not None else default)

    async def _infer_watched(
        self,
        scope: Scope,
        info: Any,
        req: Any,
        sig: Any,
        slo: float | None,
        t_first: float | None,
        hook: Any,
    ) -> tuple[int, bytes, list[Any]]:
        """`_infer_body`'s run for an unpinned request with the server's disconnect hook:
        `until_disconnect` and `oip_serve.infer` inlined (the same cancellation, refusal
        conversion and answer; two coroutine layers less, resumed once per answer)."""
        me = asyncio.current_task()
        gone = False

        def hang_up() -> None:
            nonlocal gone
            gone = True
            if me is not None:
                me.cancel()

        undo = hook(hang_up)
        try:
            res = await self.gw.infer(info.name, req.rows(), slo, arrival=t_first)
        except asyncio.CancelledError:
            if gone and me is not None:
                me.uncancel()
                return 499, b'{"error": "client closed the connection"}', []
            raise
        except Refused as e:
            err = oip_serve.refused_error(e)
            if err.status == 503:
                scope["state"]["tidal.refused"] = "admission"
            return refusal_answer(err)
        finally:
            undo()
        named = as_named(res.output, [m.name for m in sig.outputs])
        default = self.gw.config.default_slo_ms
        return infer_answer(info.name, sig, named, req, res, slo if slo is not None else default)

    def openapi(self) -> bytes:
        if self._openapi is None:
            from tidal.dataplane.openapi import document

            self._openapi = orjson.dumps(document())
        return self._openapi

    # ------------------------------------------------------------------ repository
    async def _repository(
        self, path: str, method: str, scope: Scope, receive: Any
    ) -> tuple[int, bytes, list[Any]]:
        parts = path[len("/v2/repository/") :].split("/")
        is_index = parts == ["index"]
        is_load = len(parts) == 3 and parts[0] == "models" and parts[2] in ("load", "unload")
        if not (is_index or is_load):
            raise OIPError(404, f"no route {method} {path}")
        if method != "POST":
            raise _allow("POST")
        repo = getattr(self.gw, "repository", None)
        body = await self._body(scope, receive)
        try:
            req = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError as e:
            raise OIPError(400, f"malformed JSON body: {e}") from None
        if not isinstance(req, dict):
            raise OIPError(400, "request body must be a JSON object")
        if is_index:
            ready_only = req.get("ready", False)
            if not isinstance(ready_only, bool):
                raise OIPError(400, f"`ready` must be true or false, got {ready_only!r}")
            return 200, orjson.dumps(oip_serve.repository_index(self.gw, repo, ready_only)), []
        if not isinstance(req.get("parameters", {}), dict):
            raise OIPError(400, f"`parameters` must be an object, got {req['parameters']!r}")
        self._check_token(scope)
        if repo is None:
            raise OIPError(400, "no model repository is served (start with --model-repository DIR)")
        await oip_serve.repository_call(repo, parts[2], parts[1])
        return 200, b"", []

    # ------------------------------------------------------------------ admin
    def _check_token(self, scope: Scope) -> None:
        token = self.cfg.admin_token()
        if not token:
            raise OIPError(403, "admin endpoints disabled: no token configured (TIDAL_TOKEN)")
        got = b""
        for k, v in scope["headers"]:
            if k == b"authorization":
                got = v
        want = b"Bearer " + token.encode()
        if not got or not hmac.compare_digest(got, want):
            raise OIPError(
                401, "missing or wrong bearer token", [*_JSON, (b"www-authenticate", b"Bearer")]
            )

    async def _admin(
        self, path: str, method: str, scope: Scope, receive: Any
    ) -> tuple[int, bytes, list[Any]]:
        if path == "/admin/plan":
            if method == "GET":  # target, in_force and pending, separately (planstatus)
                if self.gw.current_plan() is None:
                    return 200, b"null", []
                return 200, orjson.dumps(plan_status(self.gw)), []
            if method == "PUT":
                body = await self._body(scope, receive)
                try:
                    plan = Plan.model_validate_json(body)
                except ValidationError as e:
                    msg = first_error(e, empty_loc="(body)", show_input=False)
                    raise OIPError(400, f"invalid plan: {msg}") from None
                query = scope.get("query_string", b"")
                wait = b"wait=false" not in query
                try:  # checked against the machine: 409 and nothing applied (issue 13)
                    check_admin_plan(self.gw, plan, scale_to_zero=b"scale_to_zero=true" in query)
                except PlanRejected as e:
                    raise OIPError(409, f"plan not applied: {e}") from None
                try:
                    plan = await self.gw.apply_plan(plan, wait=wait)
                except TidalError as e:
                    raise OIPError(400, str(e)) from None
                return 200, plan.model_dump_json().encode(), []
            raise _allow("GET, PUT")
        if path == "/admin/refusals":
            if method != "GET":
                raise _allow("GET")
            out = self.refusals.summary()
            if b"reset=true" in scope.get("query_string", b""):
                self.refusals.reset()
            return 200, orjson.dumps(out), []
        if path == "/admin/stats":
            if method != "GET":
                raise _allow("GET")
            snaps = self.gw.metrics_snapshot()
            return 200, orjson.dumps({k: v.__dict__ for k, v in snaps.items()}), []
        raise OIPError(404, f"no admin route {method} {path}")
