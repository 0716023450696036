"""Open Inference Protocol v2: inference requests and responses, transport-neutral.

Used by the REST face (`tidal.dataplane.http`) and the gRPC face (`tidal.dataplane.grpc_server`),
so both check the same things and say the same words. Pure: no I/O, no clock.

Contracts:
- `ModelSig` is what a served model accepts and answers: named inputs and outputs with OIP
  datatypes and shapes (-1 = any; the first dimension is the batch), its versions, whether
  NaN/inf inputs are allowed. `sig_of(info)` derives it from the gateway's `ModelInfo`.
- `check_input(sig, name, datatype, shape)` returns the input's metadata and its batch shape,
  or raises `OIPError(400)` naming the input and what was expected (unknown name, datatype,
  rank, fixed dimension, batch outside 1..MAX_ROWS). `decode_values` / `decode_raw` build the
  array from JSON values or binary bytes, checking count, element kinds, integer ranges and
  (unless allowed) NaN/inf.
- `parse_rest(body, header_len, sig)` -> `InferRequest` (inputs in the model's order, every
  model input present exactly once, all with the same batch size; requested outputs checked).
- `select_outputs(sig, named, req)` -> the `OutputTensor`s to return: the requested ones (or
  all), with `binary_data` and the classification extension (`class_count`: BYTES
  "score:index" strings, top-k along the last axis) applied.
- `encode_rest(...)` -> (body, header length or None): JSON, or the binary extension when any
  output is binary (`Inference-Header-Content-Length` = header length).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from tidal.core.tensors import TensorMeta
from tidal.dataplane.tensors import (
    DATATYPES,
    TensorError,
    TensorSet,
    decode_bytes_tensor,
    encode_bytes_tensor,
    to_bytes_array,
)
from tidal.dataplane.tensors import (
    OIP_NAME as OIP_OF,
)

MAX_ROWS = 1024
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


class OIPError(Exception):
    """A request the protocol refuses: `status` (400, 404, 413...) and a message naming why."""

    def __init__(
        self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


@dataclass(frozen=True)
class ModelSig:
    """What a served model accepts and answers (see the module docstring)."""

    name: str
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    versions: tuple[str, ...]
    allow_nan: bool = False

    def input(self, name: str) -> TensorMeta:
        return self._find("input", self.inputs, name)

    def output(self, name: str) -> TensorMeta:
        return self._find("output", self.outputs, name)

    def _find(self, kind: str, tensors: tuple[TensorMeta, ...], name: str) -> TensorMeta:
        for m in tensors:
            if m.name == name:
                return m
        raise OIPError(
            400,
            f"unknown {kind} {name!r} for model {self.name!r}; "
            f"{kind}s: {[m.name for m in tensors]}",
        )


def sig_of(info: Any) -> ModelSig:
    """The ModelSig of a gateway `ModelInfo`: its `inputs`/`outputs` when it carries them, else
    those of its variant's graph (a one-stage repository model), else the zoo's single tensor
    pair `input-0` / `output-0`."""
    cached = getattr(info, "_oip_sig", None)
    if cached is not None:
        return cached
    ins = getattr(info, "inputs", None)
    outs = getattr(info, "outputs", None)
    if not (ins and outs) and len(info.stages) == 1 and info.versions:
        from tidal.models.catalog import get_variant  # one variant: its graph's tensors

        with contextlib.suppress(Exception):
            spec = get_variant(info.versions[0])
            ins, outs = spec.inputs, spec.outputs
    if ins and outs:
        inputs = tuple(_meta(m) for m in ins)
        outputs = tuple(_meta(m) for m in outs)
    else:
        dt = _oip_of(info.input_dtype)
        inputs = (TensorMeta("input-0", dt, (-1, *info.input_shape)),)
        outputs = (TensorMeta("output-0", "FP32", (-1, *info.output_shape)),)
    sig = ModelSig(
        info.name,
        inputs,
        outputs,
        tuple(info.versions),
        bool(getattr(info, "allow_nan", False)),
    )
    # ModelInfo is frozen: cache through object.__setattr__ (else derived per request)
    with contextlib.suppress(AttributeError, TypeError):
        object.__setattr__(info, "_oip_sig", sig)
    return sig


def _oip_of(dtype: Any) -> str:
    if isinstance(dtype, str) and dtype in DATATYPES:
        return dtype
    from tidal.dataplane.tensors import oip_datatype

    return oip_datatype(np.dtype(dtype))


def _meta(m: Any) -> TensorMeta:
    if isinstance(m, TensorMeta):
        return m
    if isinstance(m, dict):
        return TensorMeta(str(m["name"]), _oip_of(m["datatype"]), tuple(m["shape"]))
    dt = getattr(m, "datatype", None) or getattr(m, "dtype", None)
    return TensorMeta(str(m.name), _oip_of(dt), tuple(int(d) for d in m.shape))


def parse_slo(value: Any, max_slo_ms: float) -> float:
    """A valid slo_ms (float, 0 < slo <= max) or OIPError 400 naming the value."""
    try:
        slo = float(value)
    except (TypeError, ValueError):
        raise OIPError(400, f"slo_ms must be a number of milliseconds, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(slo) or slo <= 0 or slo > max_slo_ms:
        raise OIPError(400, f"slo_ms must be in (0, {max_slo_ms:g}] ms, got {value!r}")
    return slo


# ---------------------------------------------------------------------------- inputs
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_input(
    sig: ModelSig, name: Any, datatype: Any, shape: Any
) -> tuple[TensorMeta, list[int]]:
    """The input's metadata and its shape with the batch dimension (see module contract)."""
    if not isinstance(name, str):
        raise OIPError(400, f"input name must be a string, got {name!r}")
    meta = sig.input(name)
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise OIPError(
            400, f"input {name!r}: unknown datatype {datatype!r}; valid: {', '.join(DATATYPES)}"
        )
    if datatype != meta.datatype:
        raise OIPError(
            400, f"input {name!r}: datatype {datatype} does not match the model's {meta.datatype}"
        )
    if not isinstance(shape, list | tuple) or not all(_is_int(d) and d >= 0 for d in shape):
        raise OIPError(
            400, f"input {name!r}: shape must be a list of non-negative ints, got {shape!r}"
        )
    want = meta.shape
    got = list(shape)
    if len(got) == len(want) - 1 and want and want[0] == -1:
        got = [1, *got]  # one sample without the batch dimension
    ok = len(got) == len(want) and all(w in (-1, g) for w, g in zip(want, got, strict=True))
    if not ok or not got or not 1 <= got[0] <= MAX_ROWS:
        raise OIPError(
            400,
            f"input {name!r}: shape {list(shape)} does not match the model's {list(want)} "
            f"(-1 = any; batch 1..{MAX_ROWS})",
        )
    return meta, got


def _finite(name: str, x: np.ndarray, sig: ModelSig) -> None:
    if x.dtype.kind == "f" and not sig.allow_nan and not np.isfinite(x).all():
        raise OIPError(
            400, f"input {name!r} contains NaN or infinity (model {sig.name!r} does not allow it)"
        )


_FLOAT_MAX = {2: 65504.0, 4: float(np.finfo(np.float32).max), 8: float(np.finfo(np.float64).max)}
"""The largest finite value of the float datatypes, by item size."""


def decode_values(sig: ModelSig, meta: TensorMeta, shape: list[int], values: Any) -> np.ndarray:
    """The array of JSON `values` (flat or nested row-major) for input `meta`."""
    name, dt = meta.name, meta.datatype
    count = math.prod(shape)
    if not isinstance(values, list):
        raise OIPError(400, f"input {name!r}: `data` must be a list (or use binary_data_size)")
    if dt == "BYTES":
        try:
            flat = _flatten(values)
            if len(flat) != count:
                raise OIPError(400, f"input {name!r}: `data` has {len(flat)} values, "
                               f"shape {shape} needs {count}")  # fmt: skip
            return to_bytes_array(flat, shape)
        except TensorError as e:
            raise OIPError(400, f"input {name!r}: {e}") from None
    try:
        raw = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        raise OIPError(
            400, f"input {name!r}: `data` is not a regular list of {dt} values"
        ) from None
    want = DATATYPES[dt]
    if raw.dtype.kind in "Of" and want.kind in "iu" and raw.size:
        flat = _flatten(values)  # ints past int64 make numpy guess float64 or object
        if all(_is_int(v) for v in flat):
            raw = _big_ints(name, np.array(flat, dtype=object).reshape(raw.shape), want)
    kind = raw.dtype.kind
    ok = (
        (kind == "b" and dt == "BOOL")
        or (kind in "iu" and want.kind in "iuf")
        or (kind == "f" and want.kind == "f")
    )
    if not ok or (raw.size and raw.dtype == object):
        raise OIPError(400, f"input {name!r}: `data` is not all {dt} values")
    if raw.size != count:
        raise OIPError(
            400, f"input {name!r}: `data` has {raw.size} values, shape {shape} needs {count}"
        )
    if want.kind in "iu" and raw.size:
        info = np.iinfo(want)
        lo, hi = int(raw.min()), int(raw.max())
        if lo < info.min or hi > info.max:
            raise OIPError(
                400, f"input {name!r}: value {lo if lo < info.min else hi} out of range for {dt}"
            )
    # The usual case in one reduction (issue 14): every value is finite and within `want`'s
    # range iff the largest magnitude is (NaN propagates through the max, inf exceeds any
    # range), so the cast cannot overflow and no NaN/inf is left to refuse.
    if (
        kind == "f"
        and raw.size
        and float(np.maximum.reduce(np.abs(raw), axis=None)) <= _FLOAT_MAX[want.itemsize]
    ):
        return raw.astype(want, copy=False).reshape(shape)  # fmt: skip
    with np.errstate(over="ignore"):  # an FP16/FP32 overflow becomes inf: refused just below
        x = raw.astype(want, copy=False).reshape(shape)
    _finite(name, x, sig)
    return x


def _big_ints(name: str, raw: np.ndarray, want: np.dtype) -> np.ndarray:
    """Integers numpy could not type (UINT64 values above 2**63 - 1): checked one by one."""
    info = np.iinfo(want)
    for v in raw.reshape(-1):
        if not _is_int(v):
            raise OIPError(400, f"input {name!r}: `data` is not all {OIP_OF[want]} values")
        if not info.min <= v <= info.max:
            raise OIPError(400, f"input {name!r}: value {v} out of range for {OIP_OF[want]}")
    return raw.astype(want)


def _flatten(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(values)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def decode_raw(
    sig: ModelSig, meta: TensorMeta, shape: list[int], data: bytes | bytearray | memoryview
) -> np.ndarray:
    """The array of binary `data` (little-endian; BYTES length-prefixed) for input `meta`."""
    count = math.prod(shape)
    if meta.datatype == "BYTES":
        try:
            return decode_bytes_tensor(data, count).reshape(shape)
        except TensorError as e:
            raise OIPError(400, f"input {meta.name!r}: {e}") from None
    dtype = DATATYPES[meta.datatype]
    if len(data) != count * dtype.itemsize:
        raise OIPError(
            400,
            f"input {meta.name!r}: {len(data)} bytes of data, shape {shape} of "
            f"{meta.datatype} needs {count * dtype.itemsize}",
        )
    x = np.frombuffer(data, dtype=dtype).reshape(shape)
    if meta.datatype == "BOOL" and x.size and int(x.view(np.uint8).max()) > 1:
        raise OIPError(400, f"input {meta.name!r}: BOOL bytes must be 0 or 1")
    _finite(meta.name, x, sig)
    return x


# ---------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: the request's default
    class_count: int = 0


@dataclass
class InferRequest:
    """A checked inference request: inputs by name in the model's order."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    binary_default: bool = False

    def rows(self) -> np.ndarray | TensorSet:
        """What the gateway takes: the array of a one-input model, else a TensorSet."""
        if len(self.inputs) == 1:
            return next(iter(self.inputs.values()))
        return TensorSet(self.inputs)


def _params(obj: Any, where: str) -> dict[str, Any]:
    p = obj.get("parameters") if isinstance(obj, dict) else None
    if p is None:
        return {}
    if not isinstance(p, dict):
        raise OIPError(400, f"{where} `parameters` must be an object, got {p!r}")
    return p


def requested_output(sig: ModelSig, name: Any, params: dict[str, Any]) -> RequestedOutput:
    """A checked entry of `outputs` (name known, binary_data a bool, class_count >= 0)."""
    if not isinstance(name, str):
        raise OIPError(400, f"requested output name must be a string, got {name!r}")
    sig.output(name)
    binary = params.get("binary_data")
    if binary is not None and not isinstance(binary, bool):
        raise OIPError(400, f"output {name!r}: binary_data must be true or false, got {binary!r}")
    # The classification extension's parameter is "classification" (tritonclient sends it);
    # "class_count" is accepted as its alias.
    key = "classification" if "classification" in params else "class_count"
    k = params.get(key, 0)
    if not _is_int(k) or k < 0:
        raise OIPError(400, f"output {name!r}: {key} must be an int >= 0, got {k!r}")
    return RequestedOutput(name, binary, k)


def assemble(sig: ModelSig, got: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs in the model's order; 400 for a missing input or batch sizes that differ."""
    missing = [m.name for m in sig.inputs if m.name not in got]
    if missing:
        raise OIPError(
            400,
            f"model {sig.name!r} needs inputs {[m.name for m in sig.inputs]}; missing {missing}",
        )
    ordered = {m.name: got[m.name] for m in sig.inputs}
    batches = {k: int(v.shape[0]) for k, v in ordered.items()}
    if len(set(batches.values())) > 1:
        raise OIPError(400, f"inputs have different batch sizes: {batches}")
    return ordered


def parse_rest(body: bytes, header_len: int | None, sig: ModelSig) -> InferRequest:
    """An OIP v2 REST infer body (JSON, or the binary extension) -> InferRequest; OIPError."""
    raw = body if header_len is None else body[:header_len]
    try:
        req = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise OIPError(400, f"malformed JSON body: {e}") from None
    if not isinstance(req, dict):
        raise OIPError(400, "request body must be a JSON object with an `inputs` list")
    rid = req.get("id")
    if rid is not None and not isinstance(rid, str):
        raise OIPError(400, f"`id` must be a string, got {rid!r}")
    params = _params(req, "request")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise OIPError(400, f"`inputs` must be a non-empty list; model {sig.name!r} takes "
                       f"{[m.name for m in sig.inputs]}")  # fmt: skip
    got: dict[str, np.ndarray] = {}
    offset = header_len if header_len is not None else len(body)
    for inp in inputs:
        if not isinstance(inp, dict):
            raise OIPError(400, f"each entry of `inputs` must be an object, got {inp!r}")
        name = inp.get("name")
        meta, shape = check_input(sig, name, inp.get("datatype"), inp.get("shape"))
        if meta.name in got:
            raise OIPError(400, f"input {meta.name!r} given twice")
        ip = _params(inp, f"input {meta.name!r}")
        size = ip.get("binary_data_size")
        if size is not None:
            if header_len is None:
                raise OIPError(400, f"input {meta.name!r}: binary_data_size without "
                               "Inference-Header-Content-Length")  # fmt: skip
            if not _is_int(size) or size < 0 or offset + size > len(body):
                raise OIPError(400, f"input {meta.name!r}: binary_data_size {size!r} exceeds "
                               f"the {len(body) - offset} bytes left in the body")  # fmt: skip
            if "data" in inp:
                raise OIPError(400, f"input {meta.name!r}: both `data` and binary_data_size")
            got[meta.name] = decode_raw(sig, meta, shape, memoryview(body)[offset : offset + size])
            offset += size
        else:
            got[meta.name] = decode_values(sig, meta, shape, inp.get("data"))
    if header_len is not None and offset != len(body):
        raise OIPError(400, f"{len(body) - offset} bytes of binary data not claimed by any "
                       "input's binary_data_size")  # fmt: skip
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise OIPError(400, f"binary_data_output must be true or false, got {binary_default!r}")
    outs = req.get("outputs")
    requested: list[RequestedOutput] | None = None
    if outs is not None:
        if not isinstance(outs, list):
            raise OIPError(400, f"`outputs` must be a list, got {outs!r}")
        requested = []
        for o in outs:
            if not isinstance(o, dict):
                raise OIPError(400, f"each entry of `outputs` must be an object, got {o!r}")
            requested.append(requested_output(sig, o.get("name"), _params(o, "output")))
    return InferRequest(assemble(sig, got), rid, params, requested, binary_default)


# ---------------------------------------------------------------------------- responses
@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray
    binary: bool


def classify(y: np.ndarray, k: int) -> np.ndarray:
    """The classification extension: per row, the top-k "score:index" strings (BYTES)."""
    if y.ndim == 0:
        y = y.reshape(1)
    flat = y.reshape(-1, y.shape[-1]) if y.ndim > 1 else y.reshape(1, -1)
    k = min(k, flat.shape[1])
    idx = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    out = np.empty(idx.shape, dtype=object)
    for r in range(idx.shape[0]):
        for j in range(k):
            i = int(idx[r, j])
            out[r, j] = f"{float(flat[r, i]):f}:{i}".encode()
    shape = (*y.shape[:-1], k) if y.ndim > 1 else (k,)
    return out.reshape(shape)


def select_outputs(
    sig: ModelSig, named: dict[str, np.ndarray], req: InferRequest
) -> list[OutputTensor]:
    """The outputs to return (see the module contract)."""
    wanted = req.outputs
    if wanted is None:
        wanted = [RequestedOutput(m.name) for m in sig.outputs]
    out: list[OutputTensor] = []
    for r in wanted:
        meta = sig.output(r.name)
        y = named.get(r.name)
        if y is None:
            raise OIPError(500, f"model {sig.name!r} did not produce output {r.name!r}")
        binary = req.binary_default if r.binary is None else r.binary
        if r.class_count:
            out.append(OutputTensor(r.name, "BYTES", classify(y, r.class_count), binary))
            continue
        if meta.datatype != "BYTES" and y.dtype != DATATYPES[meta.datatype]:
            y = y.astype(DATATYPES[meta.datatype])
        out.append(OutputTensor(r.name, meta.datatype, y, binary))
    return out


def raw_bytes(t: OutputTensor) -> bytes:
    """The binary form of an output (little-endian; BYTES length-prefixed)."""
    if t.datatype == "BYTES":
        return encode_bytes_tensor(t.array)
    return np.ascontiguousarray(t.array).tobytes()


def _json_data(t: OutputTensor) -> Any:
    if t.datatype == "BYTES":
        return [
            v.decode(errors="replace") if isinstance(v, bytes) else str(v)
            for v in t.array.reshape(-1)
        ]
    return np.ascontiguousarray(t.array).reshape(-1)


def encode_rest(
    model: str,
    version: str,
    outputs: list[OutputTensor],
    rid: str | None,
    parameters: dict[str, Any],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when any output is binary."""
    blobs: list[bytes] = []
    outs: list[dict[str, Any]] = []
    for t in outputs:
        entry: dict[str, Any] = {
            "name": t.name,
            "datatype": t.datatype,
            "shape": list(t.array.shape),
        }
        if t.binary:
            b = raw_bytes(t)
            entry["parameters"] = {"binary_data_size": len(b)}
            blobs.append(b)
        else:
            entry["data"] = _json_data(t)
        outs.append(entry)
    resp: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outs}
    if parameters:
        resp["parameters"] = parameters
    if rid is not None:
        resp["id"] = rid
    head = orjson.dumps(resp, option=_NUMPY)
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)
