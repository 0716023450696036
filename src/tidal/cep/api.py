"""The node manager's HTTP API (Starlette), bound to 127.0.0.1, bearer token required.

    POST /v1/operators/{name}/request   {"version": n?}         -> addresses (starts it)
    POST /v1/operators/{name}/versions  {"source": "..."} or {"language": "command",
                                         "command": [...]}, "empty_state": bool -> {version}
    POST /v1/operators/{name}/update    {"version": n}          -> timings
    POST /v1/operators/{name}/stop
    GET  /v1/operators                                          -> list
    GET  /v1/operators/{name}/parked                            -> parked (poison) events
    GET  /v1/operators/{name}/stats                             -> counters (see below)
    POST /v1/operators/{name}/events    [{...}, ...] or {"events": [...]} -> {"accepted": n}
    GET  /v1/operators/{name}/results   ?after=id&limit=n&idle_s=s   Server-Sent Events
    WS   /v1/operators/{name}/ws        push {"events": [...]}, receive results
    GET  /healthz                                               (no token)

Errors are JSON ``{"error": message}``: 401 without a valid token, 403 for a refused
version kind, 404 for an unknown operator, 409 for an operator that is not running, 400 for
bad input, 413 for a body over `MAX_BODY` bytes, 429 (with ``Retry-After``) when the
operator's input is full (`tidal.cep.gateway`). `ApiHub` is the client. The event routes
are specified in docs/cep-protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tidal.cep.gateway import Backpressure, Gateway, Tap
from tidal.cep.manager import Forbidden, NodeManager, NotRunning
from tidal.cep.registry import UnknownOperator, VersionSpec
from tidal.core.errors import TidalError, first_error

JsonList = list[dict[str, Any]]
JsonStrs = list[str]
MAX_BODY = 2 * 1024 * 1024


def _err(status: int, msg: str) -> JSONResponse:
    return JSONResponse({"error": msg}, status_code=status)


def _status(e: TidalError) -> int:
    for cls, code in ((UnknownOperator, 404), (NotRunning, 409), (Forbidden, 403)):
        if isinstance(e, cls):
            return code
    return 429 if isinstance(e, Backpressure) else 400


def _int_param(req: Request | WebSocket, name: str, default: int) -> int:
    raw = req.query_params.get(name)
    try:
        return default if raw is None else int(raw)
    except ValueError:
        raise TidalError(f"query parameter {name!r} must be an integer, got {raw!r}") from None


def make_app(manager: NodeManager, token: str, gateway: Gateway | None = None) -> Starlette:
    """The ASGI app serving `manager`; every route but /healthz checks the bearer token.
    `gateway` serves the event routes (default: one with its default limits)."""
    if len(token) < 16:
        raise TidalError(f"the API token must have at least 16 characters, got {len(token)}")
    want = f"Bearer {token}".encode()
    gw = gateway or Gateway(manager.request)

    def authorized(req: Request | WebSocket) -> bool:
        got = req.headers.get("authorization", "").encode()
        return hmac.compare_digest(got, want)

    async def body(req: Request) -> dict[str, Any]:
        raw = await req.body()
        if len(raw) > MAX_BODY:
            raise _TooLarge(len(raw))
        if not raw:
            return {}
        try:
            v = json.loads(raw)
        except ValueError as e:
            raise TidalError(f"request body is not JSON: {e}") from None
        if not isinstance(v, dict):
            raise TidalError("request body must be a JSON object")
        return v

    def route(fn: Any) -> Any:
        async def wrapped(req: Request) -> JSONResponse:
            if not authorized(req):
                return _err(401, "missing or wrong bearer token")
            try:
                return JSONResponse(await fn(req))
            except _TooLarge as e:
                return _err(413, f"request body of {e.args[0]} bytes exceeds {MAX_BODY}")
            except ValidationError as e:
                return _err(400, first_error(e, empty_loc="body", show_input=False))
            except TidalError as e:
                r = _err(_status(e), str(e))
                if isinstance(e, Backpressure):
                    r.headers["Retry-After"] = "1"
                return r

        return wrapped

    async def request_op(req: Request) -> Any:
        b = await body(req)
        return await run_in_threadpool(manager.request, req.path_params["name"], b.get("version"))

    async def register(req: Request) -> Any:
        spec = VersionSpec.model_validate(await body(req))
        return {
            "name": req.path_params["name"],
            "version": manager.register(req.path_params["name"], spec),
        }

    async def update(req: Request) -> Any:
        b = await body(req)
        if not isinstance(b.get("version"), int):
            raise TidalError(f"update needs an integer 'version', got {b.get('version')!r}")
        return await run_in_threadpool(manager.update, req.path_params["name"], b["version"])

    async def stop(req: Request) -> Any:
        return await run_in_threadpool(manager.stop, req.path_params["name"])

    async def listing(req: Request) -> Any:
        return {"operators": manager.list()}

    async def parked(req: Request) -> Any:
        return {"parked": [p.decode("utf-8", "replace") for p in _parked(req.path_params["name"])]}

    def _parked(name: str) -> list[bytes]:
        return manager.parked(name)

    async def stats(req: Request) -> Any:
        return await run_in_threadpool(_stats, req.path_params["name"])

    def _stats(name: str) -> dict[str, Any]:
        manager.registry.get(name)  # 404 for an unknown operator
        row: dict[str, Any] = {"name": name, "gateway": gw.stats(name)}
        dep = manager.deployments.get(name)
        if dep is not None:
            row.update(manager.describe(dep))
        return row

    async def events(req: Request) -> Any:
        raw = await req.body()
        if len(raw) > MAX_BODY:
            raise _TooLarge(len(raw))
        try:
            v = json.loads(raw or b"[]")
        except ValueError as e:
            raise TidalError(f"request body is not JSON: {e}") from None
        evs = v.get("events") if isinstance(v, dict) else v
        if not isinstance(evs, list):
            raise TidalError('body must be a JSON array of events or {"events": [...]}')
        tap = await run_in_threadpool(gw.tap, req.path_params["name"])
        n = await run_in_threadpool(tap.push, evs)
        return {"accepted": n}

    async def results(req: Request) -> Any:
        if not authorized(req):
            return _err(401, "missing or wrong bearer token")
        try:
            after = _int_param(req, "after", int(req.headers.get("last-event-id", "0") or 0))
            limit = _int_param(req, "limit", 0)
            idle = float(req.query_params.get("idle_s", "0"))
            tap = await run_in_threadpool(gw.tap, req.path_params["name"])
        except ValueError:
            return _err(400, "query parameter 'idle_s' must be a number")
        except TidalError as e:
            return _err(_status(e), str(e))

        async def sse() -> AsyncIterator[bytes]:
            yield b": tidal-cep results\n\n"
            async for first, evs, missed in _follow(tap, after, limit, idle):
                if missed:
                    yield f"event: gap\ndata: {json.dumps({'missed': missed})}\n\n".encode()
                body = json.dumps({"first": first, "events": evs}, separators=(",", ":"))
                last = first + len(evs) - 1
                yield f"id: {last}\nevent: results\ndata: {body}\n\n".encode()

        return StreamingResponse(
            sse(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    async def ws(sock: WebSocket) -> None:
        if not authorized(sock):
            await sock.close(code=1008)
            return
        try:
            tap = await run_in_threadpool(gw.tap, sock.path_params["name"])
            after = _int_param(sock, "after", 0)
        except TidalError as e:
            await sock.accept()
            await sock.send_json({"error": str(e), "status": _status(e)})
            await sock.close(code=1008)
            return
        await sock.accept()

        async def sender() -> None:
            async for first, evs, missed in _follow(tap, after, 0, 0.0):
                if missed:
                    await sock.send_json({"gap": missed})
                await sock.send_json({"first": first, "events": evs})

        task = asyncio.create_task(sender())
        try:
            while True:
                msg = await sock.receive_text()
                if len(msg) > MAX_BODY:
                    await sock.send_json({"error": "message too large", "status": 413})
                    continue
                try:
                    v = json.loads(msg)
                    evs = v.get("events") if isinstance(v, dict) else v
                    if not isinstance(evs, list):
                        raise TidalError('send {"events": [...]}')
                    n = await run_in_threadpool(tap.push, evs)
                    await sock.send_json({"accepted": n})
                except ValueError as e:
                    await sock.send_json({"error": f"not JSON: {e}", "status": 400})
                except TidalError as e:
                    await sock.send_json({"error": str(e), "status": _status(e)})
        except WebSocketDisconnect:
            pass
        finally:
            task.cancel()

    async def health(req: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/healthz", health),
            Route("/v1/operators", route(listing)),
            Route("/v1/operators/{name}/request", route(request_op), methods=["POST"]),
            Route("/v1/operators/{name}/versions", route(register), methods=["POST"]),
            Route("/v1/operators/{name}/update", route(update), methods=["POST"]),
            Route("/v1/operators/{name}/stop", route(stop), methods=["POST"]),
            Route("/v1/operators/{name}/parked", route(parked)),
            Route("/v1/operators/{name}/stats", route(stats)),
            Route("/v1/operators/{name}/events", route(events), methods=["POST"]),
            Route("/v1/operators/{name}/results", results),
            WebSocketRoute("/v1/operators/{name}/ws", ws),
        ],
        lifespan=_closing(gw),
    )


def _closing(gw: Gateway) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        gw.close()

    return lifespan


async def _follow(
    tap: Tap, after: int, limit: int, idle_s: float
) -> AsyncIterator[tuple[int, list[dict[str, Any]], int]]:
    """Results of `tap` with id > `after`, as they come: (first id, events, missed).
    Ends after `limit` results (0: never) or `idle_s` seconds without one (0: never)."""
    w = tap.subscribe()
    sent = 0
    try:
        while True:
            w.event.clear()
            first, evs, missed = tap.since(after, (limit - sent) if limit else 10_000)
            if evs or missed:
                yield first, evs, missed
                after = first + len(evs) - 1
                sent += len(evs)
                if limit and sent >= limit:
                    return
                continue
            try:
                await asyncio.wait_for(w.event.wait(), timeout=idle_s or None)
            except TimeoutError:
                return
    finally:
        tap.unsubscribe(w)


class _TooLarge(Exception):
    pass


class ApiHub:
    """Client of the HTTP API; usable as the `Hub` of the host engines."""

    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {token}"})

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        r = self.http.request(method, f"{self.url}{path}", json=body)
        if r.status_code >= 400:
            try:
                msg = r.json().get("error", r.text)
            except ValueError:
                msg = r.text
            raise TidalError(f"node manager: {msg} (HTTP {r.status_code})")
        return r.json()

    def request(self, name: str, version: int | None = None) -> dict[str, Any]:
        body = {} if version is None else {"version": version}
        return dict(self._call("POST", f"/v1/operators/{name}/request", body))

    def push(self, name: str, events: list[dict[str, Any]]) -> int:
        """POST events; raises TidalError (HTTP 429 included) when refused."""
        return int(
            self._call("POST", f"/v1/operators/{name}/events", {"events": events})["accepted"]
        )

    def stats(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/operators/{name}/stats"))

    def register(self, name: str, **spec: Any) -> int:
        return int(self._call("POST", f"/v1/operators/{name}/versions", spec)["version"])

    def update(self, name: str, version: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/operators/{name}/update", {"version": version}))

    def stop(self, name: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/operators/{name}/stop", {}))

    def list(self) -> JsonList:
        return list(self._call("GET", "/v1/operators")["operators"])

    def parked(self, name: str) -> JsonStrs:
        return list(self._call("GET", f"/v1/operators/{name}/parked")["parked"])

    def close(self) -> None:
        self.http.close()
