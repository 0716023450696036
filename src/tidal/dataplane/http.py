"""The gateway's HTTP face: a raw ASGI app speaking the Open Inference Protocol v2 (REST).

Routes: `GET /v2/health/live|ready`, `GET /v2`, `GET /v2/models/{m}[/versions/{v}]`,
`GET /v2/models/{m}[/versions/{v}]/ready`, `POST /v2/models/{m}[/versions/{v}]/infer`
(JSON tensors, and the binary tensor extension: `Inference-Header-Content-Length`),
`GET /metrics` (Prometheus), `GET|PUT /admin/plan` and `GET /admin/stats` (bearer token).

Status codes: 400 malformed body / wrong datatype, dtype or shape / bad `slo_ms`; 401 missing or
wrong token; 403 admin disabled (no token configured); 404 unknown model or route; 405 wrong
method; 413 body above `max_body_bytes`; 503 refused (JSON reason + `Retry-After`); 504 expired;
5xx worker failure. Every error body is JSON `{"error": "..."}` naming the problem.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import MutableMapping
from typing import Any

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError

from tidal.core.errors import TidalError, first_error
from tidal.core.plan import Plan
from tidal.dataplane.gateway import Gateway, ModelInfo
from tidal.dataplane.replica import Refused

Scope = MutableMapping[str, Any]
DATATYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}  # fmt: skip
OIP_NAME = {v: k for k, v in DATATYPES.items()}
MAX_ROWS = 1024
_JSON = [(b"content-type", b"application/json")]
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


def parse_slo(value: Any, max_slo_ms: float) -> float:
    """A valid slo_ms (float, 0 < slo <= max) or HTTPError 400 naming the value."""
    try:
        slo = float(value)
    except (TypeError, ValueError):
        raise HTTPError(400, f"slo_ms must be a number of milliseconds, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(slo) or slo <= 0 or slo > max_slo_ms:
        raise HTTPError(400, f"slo_ms must be in (0, {max_slo_ms:g}] ms, got {value!r}")
    return slo


def parse_infer(
    body: bytes, info: ModelInfo, header_len: int | None
) -> tuple[np.ndarray, Any, Any]:
    """(input rows, request id, parameters) from an OIP v2 infer body; HTTPError 400 otherwise."""
    raw = body if header_len is None else body[:header_len]
    try:
        req = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise HTTPError(400, f"malformed JSON body: {e}") from None
    if not isinstance(req, dict):
        raise HTTPError(400, "request body must be a JSON object with an `inputs` list")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise HTTPError(400, f"model {info.name!r} takes exactly one input in `inputs`")
    inp = inputs[0]
    dt = inp.get("datatype")
    want = OIP_NAME[info.input_dtype]
    if dt not in DATATYPES:
        raise HTTPError(400, f"unknown datatype {dt!r}; valid: {', '.join(DATATYPES)}")
    if dt != want:
        raise HTTPError(400, f"datatype {dt} does not match model input datatype {want}")
    shape = inp.get("shape")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or not shape
    ):
        raise HTTPError(400, f"shape must be a non-empty list of non-negative ints, got {shape!r}")
    feat = list(info.input_shape)
    if shape == feat:
        shape = [1, *feat]
    if shape[1:] != feat or not 1 <= shape[0] <= MAX_ROWS:
        raise HTTPError(
            400,
            f"shape {inp.get('shape')} does not match model input [n, {', '.join(map(str, feat))}]"
            f" with 1 <= n <= {MAX_ROWS}",
        )
    dtype = np.dtype(DATATYPES[dt])
    count = math.prod(shape)
    params = inp.get("parameters") or {}
    if header_len is not None and isinstance(params, dict) and "binary_data_size" in params:
        data = body[header_len:]
        if params["binary_data_size"] != len(data) or len(data) != count * dtype.itemsize:
            raise HTTPError(
                400,
                f"binary_data_size {params['binary_data_size']} does not match {len(data)} bytes "
                f"received / {count * dtype.itemsize} bytes for shape {shape}",
            )
        x = np.frombuffer(data, dtype=dtype).reshape(shape)
    else:
        values = inp.get("data")
        if not isinstance(values, list):
            raise HTTPError(400, "input `data` must be a list (or use the binary extension)")
        try:
            x = np.asarray(values, dtype=dtype)
        except (ValueError, TypeError, OverflowError):
            raise HTTPError(400, f"input `data` is not all {dt} values") from None
        if x.size != count:
            raise HTTPError(400, f"input `data` has {x.size} values, shape {shape} needs {count}")
        if dtype.kind == "f" and not np.isfinite(x).all():
            raise HTTPError(400, "input `data` contains NaN or infinity")
        x = x.reshape(shape)
    return x, req.get("id"), req.get("parameters")


class OIPApp:
    """The ASGI application (see the module docstring)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.cfg = gateway.config
        self.registry = CollectorRegistry()
        self.registry.register(gateway.collector())

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
                except Exception as e:
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.gw.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Any, send: Any) -> None:
        try:
            status, body, headers = await self._route(scope, receive)
        except HTTPError as e:
            status, body, headers = e.status, orjson.dumps({"error": e.message}), e.headers
        except Exception as e:  # a bug must not take the server down: 500 with the reason
            status, body, headers = 500, orjson.dumps({"error": f"internal error: {e!r}"}), []
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": headers or _JSON,
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _read_body(self, scope: Scope, receive: Any) -> bytes:
        cap = self.cfg.max_body_bytes
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    raise HTTPError(400, f"bad content-length {v!r}") from None
                if n > cap:
                    raise HTTPError(413, f"body of {n} bytes exceeds the cap of {cap} bytes")
        msg = await receive()
        body: bytes = msg.get("body", b"")
        if not msg.get("more_body"):
            return body
        parts = [body]
        size = len(body)
        while msg.get("more_body"):
            msg = await receive()
            chunk: bytes = msg.get("body", b"")
            size += len(chunk)
            if size > cap:
                raise HTTPError(413, f"body exceeds the cap of {cap} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def _route(self, scope: Scope, receive: Any) -> tuple[int, bytes, list[Any]]:
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith("/v2/models/"):
            rest = path[11:].split("/")
            name = rest[0]
            if len(rest) >= 3 and rest[1] == "versions":
                rest = [name, *rest[3:]]
            info = self.gw.models.get(name)
            if info is None:
                raise HTTPError(404, f"unknown model {name!r}; models: {sorted(self.gw.models)}")
            action = rest[1] if len(rest) > 1 else ""
            if action == "infer":
                if method != "POST":
                    raise HTTPError(405, "infer takes POST")
                return await self._infer(scope, receive, info)
            if method != "GET":
                raise HTTPError(405, f"{path} takes GET")
            if action == "ready":
                ok = self._model_ready(info)
                return (200 if ok else 503), orjson.dumps({"name": name, "ready": ok}), []
            if action == "":
                return 200, orjson.dumps(self._metadata(info)), []
            raise HTTPError(404, f"no route {path}")
        if path == "/v2/health/live":
            return 200, b'{"live":true}', []
        if path == "/v2/health/ready":
            ok = self.gw.ready and all(self._model_ready(i) for i in self.gw.models.values())
            return (200 if ok else 503), orjson.dumps({"ready": ok}), []
        if path == "/v2" or path == "/v2/":
            return (
                200,
                orjson.dumps(
                    {"name": "tidal", "version": "0.1.0", "extensions": ["binary_tensor"]}
                ),
                [],
            )
        if path == "/metrics":
            data = generate_latest(self.registry)
            return 200, data, [(b"content-type", CONTENT_TYPE_LATEST.encode())]
        if path.startswith("/admin/"):
            self._check_token(scope)
            return await self._admin(path, method, scope, receive)
        raise HTTPError(404, f"no route {method} {path}")

    def _model_ready(self, info: ModelInfo) -> bool:
        return all(
            any(r.state == "ready" for r in self.gw.stages[s].replicas()) for s in info.stages
        )

    def _metadata(self, info: ModelInfo) -> dict[str, Any]:
        dt = OIP_NAME[info.input_dtype]
        return {
            "name": info.name,
            "versions": info.versions,
            "platform": "tidal",
            "stages": info.stages,
            "inputs": [{"name": "input-0", "datatype": dt, "shape": [-1, *info.input_shape]}],
            "outputs": [
                {"name": "output-0", "datatype": "FP32", "shape": [-1, *info.output_shape]}
            ],
        }

    async def _infer(
        self, scope: Scope, receive: Any, info: ModelInfo
    ) -> tuple[int, bytes, list[Any]]:
        header_len: int | None = None
        slo_header: bytes | None = None
        for k, v in scope["headers"]:
            if k == b"x-tidal-slo-ms":
                slo_header = v
            elif k == b"inference-header-content-length":
                try:
                    header_len = int(v)
                except ValueError:
                    raise HTTPError(400, f"bad Inference-Header-Content-Length {v!r}") from None
        body = await self._read_body(scope, receive)
        if header_len is not None and not 0 < header_len <= len(body):
            raise HTTPError(400, f"Inference-Header-Content-Length {header_len} out of range")
        x, rid, params = parse_infer(body, info, header_len)
        slo: float | None = None
        if isinstance(params, dict) and "slo_ms" in params:
            slo = parse_slo(params["slo_ms"], self.cfg.max_slo_ms)
        elif slo_header is not None:
            slo = parse_slo(slo_header.decode("latin-1"), self.cfg.max_slo_ms)
        try:
            res = await self.gw.infer(info.name, x, slo)
        except Refused as e:
            out: dict[str, Any] = {"error": e.reason, "cause": e.cause}
            headers = list(_JSON)
            if e.retry_after_s is not None:
                out["retry_after_ms"] = round(e.retry_after_s * 1e3, 3)
                secs = max(1, math.ceil(e.retry_after_s))
                headers.append((b"retry-after", str(secs).encode()))
            return e.status, orjson.dumps(out), headers
        y = res.output
        if y.dtype != np.float32:
            y = y.astype(np.float32)
        resp = {
            "model_name": info.name,
            "model_version": res.variants[-1],
            "outputs": [
                {
                    "name": "output-0",
                    "datatype": "FP32",
                    "shape": list(y.shape),
                    "data": np.ascontiguousarray(y).reshape(-1),
                }
            ],
            "parameters": {
                "variant": res.variants[-1],
                "variants": res.variants,
                "batch_size": res.batch_sizes[-1],
                "batch_sizes": res.batch_sizes,
                "queue_ms": round(res.queue_ms, 3),
                "total_ms": round(res.total_ms, 3),
                "late": res.late,
            },
        }
        if rid is not None:
            resp["id"] = rid
        return 200, orjson.dumps(resp, option=_NUMPY), []

    def _check_token(self, scope: Scope) -> None:
        token = self.cfg.admin_token()
        if not token:
            raise HTTPError(403, "admin endpoints disabled: no token configured (TIDAL_TOKEN)")
        got = b""
        for k, v in scope["headers"]:
            if k == b"authorization":
                got = v
        want = b"Bearer " + token.encode()
        if not got or not hmac.compare_digest(got, want):
            raise HTTPError(
                401, "missing or wrong bearer token", [*_JSON, (b"www-authenticate", b"Bearer")]
            )

    async def _admin(
        self, path: str, method: str, scope: Scope, receive: Any
    ) -> tuple[int, bytes, list[Any]]:
        if path == "/admin/plan":
            if method == "GET":
                plan = self.gw.current_plan()
                return 200, (plan.model_dump_json().encode() if plan else b"null"), []
            if method == "PUT":
                body = await self._read_body(scope, receive)
                try:
                    plan = Plan.model_validate_json(body)
                except ValidationError as e:
                    msg = first_error(e, empty_loc="(body)", show_input=False)
                    raise HTTPError(400, f"invalid plan: {msg}") from None
                wait = b"wait=false" not in scope.get("query_string", b"")
                try:
                    plan = await self.gw.apply_plan(plan, wait=wait)
                except TidalError as e:
                    raise HTTPError(400, str(e)) from None
                return 200, plan.model_dump_json().encode(), []
            raise HTTPError(405, "/admin/plan takes GET or PUT")
        if path == "/admin/stats" and method == "GET":
            snaps = self.gw.metrics_snapshot()
            return 200, orjson.dumps({k: v.__dict__ for k, v in snaps.items()}), []
        raise HTTPError(404, f"no admin route {method} {path}")
