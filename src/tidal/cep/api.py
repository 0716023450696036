"""The node manager's HTTP API (Starlette), bound to 127.0.0.1, bearer token required.

    POST /v1/operators/{name}/request   {"version": n?}         -> addresses (starts it)
    POST /v1/operators/{name}/versions  {"source": "..."} or {"language": "command",
                                         "command": [...]}, "empty_state": bool -> {version}
    POST /v1/operators/{name}/update    {"version": n}          -> timings
    POST /v1/operators/{name}/stop
    GET  /v1/operators                                          -> list
    GET  /v1/operators/{name}/parked                            -> parked (poison) events
    GET  /healthz                                               (no token)

Errors are JSON ``{"error": message}``: 401 without a valid token, 404 for an unknown
operator, 400 for bad input, 413 for a body over `MAX_BODY` bytes. `ApiHub` is the client.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

import httpx
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tidal.cep.manager import NodeManager
from tidal.cep.registry import VersionSpec
from tidal.core.errors import TidalError, first_error

JsonList = list[dict[str, Any]]
JsonStrs = list[str]
MAX_BODY = 2 * 1024 * 1024


def _err(status: int, msg: str) -> JSONResponse:
    return JSONResponse({"error": msg}, status_code=status)


def make_app(manager: NodeManager, token: str) -> Starlette:
    """The ASGI app serving `manager`; every route but /healthz checks the bearer token."""
    if len(token) < 16:
        raise TidalError(f"the API token must have at least 16 characters, got {len(token)}")
    want = f"Bearer {token}".encode()

    def authorized(req: Request) -> bool:
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
                status = 404 if str(e).startswith("unknown operator") else 400
                return _err(status, str(e))

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
        ]
    )


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

    def request(self, name: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/operators/{name}/request", {}))

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
