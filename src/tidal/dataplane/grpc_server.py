"""The gateway's gRPC face: the OIP v2 `inference.GRPCInferenceService` (KServe's
grpc_predict_v2.proto) on grpcio's asyncio server, sharing the gateway, queues and deadlines
with REST.

Contracts:
- `GRPCServer(gw, host, port)`; `await start()` binds (port 0 = any free port) and returns the
  bound port; `await stop(grace)` finishes in-flight calls.
- ModelInfer checks exactly what REST checks (`tidal.dataplane.oip`), with the same messages:
  inputs by name, datatype, shape; `raw_input_contents` (all inputs or none) or typed
  `contents`; requested outputs, `class_count`; outputs always in `raw_output_contents`.
- The request's deadline is the sooner of the gRPC deadline and the `slo_ms` parameter
  (int64 or string), else the config's `default_slo_ms`; a call whose gRPC deadline has
  already passed is answered DEADLINE_EXCEEDED without queueing.
- Status codes: 400 INVALID_ARGUMENT, 404 NOT_FOUND, 503 UNAVAILABLE with a
  google.rpc.RetryInfo detail (and `retry-after-ms` trailing metadata), 504 DEADLINE_EXCEEDED,
  401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 413 RESOURCE_EXHAUSTED, other 5xx INTERNAL.
- RepositoryModelLoad/Unload accept KServe's request (model_name = field 1) and Triton's
  (model_name = field 2), and need the admin token (`authorization: Bearer ...` metadata).
  Triton's RepositoryIndex is served too (tritonclient's get_model_repository_index).
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from tidal.dataplane import oip_serve
from tidal.dataplane.grpc_v2 import grpc_predict_v2_pb2 as pb
from tidal.dataplane.oip import (
    InferRequest,
    OIPError,
    assemble,
    check_input,
    decode_raw,
    parse_slo,
    raw_bytes,
    requested_output,
    select_outputs,
    sig_of,
)
from tidal.dataplane.tensors import DATATYPES, TensorError, to_bytes_array

log = logging.getLogger("tidal.dataplane")
SERVICE = "inference.GRPCInferenceService"
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_CONTENTS = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
    "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip


def _param(p: pb.InferParameter) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def _params(m: Any) -> dict[str, Any]:
    return {k: _param(v) for k, v in m.items()}


def decode_contents(
    sig: Any, meta: Any, shape: list[int], contents: pb.InferTensorContents
) -> np.ndarray:
    """An input from typed `contents` (FP16 has none: raw_input_contents only)."""
    field = _CONTENTS.get(meta.datatype)
    if field is None:
        raise OIPError(400, f"input {meta.name!r}: {meta.datatype} needs raw_input_contents")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise OIPError(
            400,
            f"input {meta.name!r}: `data` has {len(values)} values, shape {shape} needs {count}",
        )
    if meta.datatype == "BYTES":
        try:
            return to_bytes_array(list(values), shape)
        except TensorError as e:
            raise OIPError(400, f"input {meta.name!r}: {e}") from None
    dtype = DATATYPES[meta.datatype]
    arr = np.asarray(values)
    if dtype.kind in "iu" and arr.size:
        info = np.iinfo(dtype)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:
            raise OIPError(400, f"input {meta.name!r}: value {lo if lo < info.min else hi} "
                           f"out of range for {meta.datatype}")  # fmt: skip
    x = arr.astype(dtype, copy=False).reshape(shape)
    if x.dtype.kind == "f" and not sig.allow_nan and not np.isfinite(x).all():
        raise OIPError(400, f"input {meta.name!r} contains NaN or infinity "
                       f"(model {sig.name!r} does not allow it)")  # fmt: skip
    return x


def parse_grpc(request: pb.ModelInferRequest, sig: Any) -> InferRequest:
    """ModelInferRequest -> InferRequest, the same checks as `oip.parse_rest`."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise OIPError(400, f"raw_input_contents has {len(raw)} entries for "
                       f"{len(request.inputs)} inputs (all inputs or none)")  # fmt: skip
    if not request.inputs:
        raise OIPError(400, f"`inputs` must be a non-empty list; model {sig.name!r} takes "
                       f"{[m.name for m in sig.inputs]}")  # fmt: skip
    got: dict[str, np.ndarray] = {}
    for i, inp in enumerate(request.inputs):
        meta, shape = check_input(sig, inp.name, inp.datatype, list(inp.shape))
        if meta.name in got:
            raise OIPError(400, f"input {meta.name!r} given twice")
        if raw:
            got[meta.name] = decode_raw(sig, meta, shape, raw[i])
        else:
            got[meta.name] = decode_contents(sig, meta, shape, inp.contents)
    outs = None
    if request.outputs:
        outs = [requested_output(sig, o.name, _params(o.parameters)) for o in request.outputs]
    return InferRequest(
        assemble(sig, got), request.id or None, _params(request.parameters), outs, True
    )


# ------------------------------------------------------------------ raw protobuf helpers
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if pos >= len(buf):
            raise OIPError(400, "truncated protobuf message")
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, pos
        shift += 7


def _fields(buf: bytes) -> dict[int, Any]:
    """Top-level scalar/bytes fields of a protobuf message (last value wins)."""
    out: dict[int, Any] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            out[num], pos = _varint(buf, pos)
        elif wt == 2:
            n, pos = _varint(buf, pos)
            out[num] = bytes(buf[pos : pos + n])
            pos += n
        elif wt == 1:
            pos += 8
        elif wt == 5:
            pos += 4
        else:
            raise OIPError(400, f"unsupported protobuf wire type {wt}")
    return out


def _enc_str(num: int, s: str) -> bytes:
    b = s.encode()
    return _enc_varint((num << 3) | 2) + _enc_varint(len(b)) + b


def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _load_request(buf: bytes) -> str:
    f = _fields(buf)
    name = f.get(2) or f.get(1) or b""  # Triton: model_name = 2; KServe: model_name = 1
    return name.decode(errors="replace") if isinstance(name, bytes) else ""


def _index_response(entries: list[dict[str, Any]]) -> bytes:
    out = bytearray()
    for e in entries:
        inner = b"".join(
            _enc_str(i, str(e.get(k, "")))
            for i, k in ((1, "name"), (2, "version"), (3, "state"), (4, "reason"))
        )
        out += _enc_varint((1 << 3) | 2) + _enc_varint(len(inner)) + inner
    return bytes(out)


class GRPCServer:
    """See the module docstring."""

    def __init__(self, gw: Any, host: str, port: int) -> None:
        self.gw = gw
        self.host = host
        self.port = port
        self.server: grpc.aio.Server | None = None

    async def start(self) -> int:
        cap = int(self.gw.config.max_body_bytes)
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", cap),
                ("grpc.max_send_message_length", max(cap, 64 << 20)),
                ("grpc.so_reuseport", 0),
            ]
        )
        self.server.add_generic_rpc_handlers((self._handlers(),))
        bound = self.server.add_insecure_port(f"{self.host}:{self.port}")
        if bound == 0:
            raise OSError(f"cannot bind gRPC on {self.host}:{self.port}")
        await self.server.start()
        self.port = bound
        return bound

    async def stop(self, grace: float = 2.0) -> None:
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None

    def _handlers(self) -> grpc.GenericRpcHandler:
        def h(fn: Callable[..., Any], req: Any, resp: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=req.FromString if hasattr(req, "FromString") else req,
                response_serializer=resp.SerializeToString
                if hasattr(resp, "SerializeToString")
                else resp,
            )

        ident = bytes
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ServerLive": h(self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
                "ServerReady": h(self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
                "ModelReady": h(self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
                "ServerMetadata": h(
                    self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
                ),
                "ModelMetadata": h(
                    self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse
                ),
                "ModelInfer": h(self.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
                "RepositoryModelLoad": h(self.load, ident, ident),
                "RepositoryModelUnload": h(self.unload, ident, ident),
                "RepositoryIndex": h(self.index, ident, ident),
            },
        )

    # ------------------------------------------------------------------ errors
    async def _abort(self, context: grpc.aio.ServicerContext, e: OIPError) -> None:
        code = _CODES.get(e.status, grpc.StatusCode.INTERNAL)
        retry = getattr(e, "retry_after_s", None)
        if code == grpc.StatusCode.UNAVAILABLE and retry is not None:
            info = error_details_pb2.RetryInfo()
            info.retry_delay.CopyFrom(duration_pb2.Duration(nanos=0))
            info.retry_delay.FromMilliseconds(max(1, round(retry * 1e3)))
            st = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=e.message)
            st.details.add().Pack(info)
            context.set_trailing_metadata(
                (
                    ("grpc-status-details-bin", st.SerializeToString()),
                    ("retry-after-ms", str(max(1, round(retry * 1e3)))),
                )
            )
        await context.abort(code, e.message)

    async def _guard(self, context: Any, fn: Callable[[], Any]) -> Any:
        try:
            return await fn()
        except OIPError as e:
            await self._abort(context, e)
        except Exception as e:  # a bug: INTERNAL with the reason, the server keeps serving
            if isinstance(e, grpc.aio.AbortError):
                raise
            log.exception("gRPC internal error")
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {e!r}")

    def _check_token(self, context: Any) -> None:
        token = self.gw.config.admin_token()
        if not token:
            raise OIPError(403, "admin endpoints disabled: no token configured (TIDAL_TOKEN)")
        got = ""
        for k, v in context.invocation_metadata() or ():
            if k == "authorization":
                got = v if isinstance(v, str) else v.decode(errors="replace")
        if not got or not hmac.compare_digest(got.encode(), b"Bearer " + token.encode()):
            raise OIPError(401, "missing or wrong bearer token")

    # ------------------------------------------------------------------ RPCs
    async def server_live(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        gw = self.gw
        ok = gw.ready and all(oip_serve.ready(gw, i) for i in gw.models.values())
        return pb.ServerReadyResponse(ready=bool(ok))

    async def model_ready(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        async def run() -> pb.ModelReadyResponse:
            _, ok = oip_serve.model_ready(self.gw, request.name, request.version or None)
            return pb.ModelReadyResponse(ready=ok)

        return await self._guard(context, run)

    async def server_metadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**oip_serve.server_metadata())

    async def model_metadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        async def run() -> pb.ModelMetadataResponse:
            info, _ = oip_serve.resolve(self.gw, request.name, request.version or None)
            m = oip_serve.model_metadata(self.gw, info)
            T = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=m["name"],
                versions=m["versions"],
                platform=m["platform"],
                inputs=[T(**t) for t in m["inputs"]],
                outputs=[T(**t) for t in m["outputs"]],
            )

        return await self._guard(context, run)

    async def model_infer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        return await self._guard(context, lambda: self._infer(request, context))

    async def _infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        gw = self.gw
        arrival = gw.clock.now()  # before the checks and decoding: they count against the SLO
        remaining = context.time_remaining()  # measured at `arrival`
        info, variant = oip_serve.resolve(gw, request.model_name, request.model_version or None)
        sig = sig_of(info)
        req = parse_grpc(request, sig)
        slo = _slo(req.parameters.get("slo_ms"), gw.config.max_slo_ms)
        bound_by_grpc = False
        if remaining is not None:
            if remaining <= 0:
                raise OIPError(504, "the gRPC deadline passed before the request was queued")
            asked = slo if slo is not None else gw.config.default_slo_ms
            bound_by_grpc = remaining * 1e3 < asked
            slo = min(asked, remaining * 1e3)
        try:
            named, res, sig = await oip_serve.infer(gw, info, req, variant, slo, arrival)
        except OIPError as e:
            # The client's own deadline cannot be met (refused as too late, or expired while
            # queued): DEADLINE_EXCEEDED, with the gateway's reason.
            if bound_by_grpc and getattr(e, "cause", None) in ("refused", "expired"):
                raise OIPError(504, f"{e.message} (the gRPC deadline)") from None
            raise
        outputs = select_outputs(sig, named, req)
        resp = pb.ModelInferResponse(
            model_name=info.name,
            model_version=oip_serve.version_of(info.name, res.variants[-1]),
            id=request.id,
        )
        for k, v in oip_serve.result_parameters(
            res, slo if slo is not None else gw.config.default_slo_ms
        ).items():
            p = resp.parameters[k]
            if isinstance(v, bool):
                p.bool_param = v
            elif isinstance(v, int):
                p.int64_param = v
            else:
                p.string_param = str(v)
        for t in outputs:
            resp.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.array.shape))
            resp.raw_output_contents.append(raw_bytes(t))
        return resp

    async def load(self, request: bytes, context: Any) -> bytes:
        return await self._repo(request, context, "load")

    async def unload(self, request: bytes, context: Any) -> bytes:
        return await self._repo(request, context, "unload")

    async def _repo(self, request: bytes, context: Any, action: str) -> bytes:
        async def run() -> bytes:
            name = _load_request(request)
            self._check_token(context)
            repo = getattr(self.gw, "repository", None)
            if repo is None:
                raise OIPError(
                    400, "no model repository is served (start with --model-repository DIR)"
                )
            await oip_serve.repository_call(repo, action, name)
            # KServe's response: model_name = 1, isLoaded/isUnloaded = 2 (Triton's is empty:
            # it skips unknown fields).
            return _enc_str(1, name) + _enc_varint(2 << 3) + b"\x01"

        return await self._guard(context, run)

    async def index(self, request: bytes, context: Any) -> bytes:
        async def run() -> bytes:
            ready_only = bool(_fields(request).get(2, 0))
            entries = oip_serve.repository_index(
                self.gw, getattr(self.gw, "repository", None), ready_only
            )
            return _index_response(entries)

        return await self._guard(context, run)


def _slo(value: Any, max_slo_ms: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise OIPError(400, f"slo_ms must be a number of milliseconds, got {value!r}")
    return parse_slo(value, max_slo_ms)
