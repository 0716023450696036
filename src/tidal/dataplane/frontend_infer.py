"""The front ends' compact infer path (`frontends: N`): HTTP and JSON work in the front end,
only the request's tensors and deadline in the scheduler process.

An infer request `POST /v2/models/{m}/infer` (no version in the URL, no Content-Encoding
other than identity: `tidal.dataplane.http_body` decodes those) of a model in the front
end's *catalog* is checked and decoded in the front end with the scheduler process's own
code (`tidal.dataplane.infer_rest`, `tidal.dataplane.oip.parse_rest`), and sent to the
scheduler as an INFER frame: the model name, the SLO, the first-byte and headers times and
the input tensors (an `ipc` set frame).
The scheduler process runs `tidal.dataplane.oip_serve.infer` on it (the same deadline, EDF
queue, admission and batching as every other request) and answers a RESULT frame (the run's
variants, batch sizes, queue and total times, lateness, and the output tensors), from which
the front end builds the HTTP answer with `infer_answer`; or a RESP frame with the complete
answer of a refusal, expiry, failure or unknown model (`refusal_answer`, `error_answer`); or
RETRY when the model's signature changed since the catalog was sent (the front end then
forwards the whole request, as for any request outside the compact path).

The catalog (HELLO frame, scheduler -> front end, orjson): per served model its inputs,
outputs (name, datatype, shape), versions and `allow_nan`, and the config's `max_slo_ms`
and `default_slo_ms`. It is sent when a front end connects, and again when the served model
set differs from the one last sent (checked on every forwarded infer request) or after a
RETRY.

What differs from HTTP in the scheduler process: the early refusals before the decode
(`tidal.dataplane.early`, headers and body) do not run, since the decode is the front end's
CPU, not the scheduler's; the scheduler's admission refuses what they would have refused (a
request that is both malformed and refusable is answered 400 here, 503 there).

Payloads (little-endian): INFER `<ddI` (first-byte time, headers time, meta length), meta
(orjson: "m" model, "s" SLO ms or null), a set frame of the inputs. RESULT `<I` (meta
length), meta (orjson: "v" variants, "b" batch sizes, "q" queue ms, "t" total ms, "l" late),
a set frame of the outputs. HELLO: the catalog. RETRY: empty.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import Any

import orjson

from tidal.core.clock import MonotonicClock
from tidal.core.tensors import TensorMeta
from tidal.dataplane import oip_serve
from tidal.dataplane.infer_rest import (
    Answer,
    check_header_len,
    error_answer,
    infer_answer,
    infer_headers,
    refusal_answer,
    request_slo,
    with_content_type,
)
from tidal.dataplane.ipc import HEADER_SIZE, decode_set, encode_set
from tidal.dataplane.oip import InferRequest, ModelSig, OIPError, parse_rest, sig_of

log = logging.getLogger("tidal.frontend")

HELLO, INFER, RESULT, RETRY = 4, 5, 6, 7
_INFER_HEAD = struct.Struct("<ddI")
_RESULT_HEAD = struct.Struct("<I")
_PREFIX = "/v2/models/"
_SUFFIX = "/infer"


def _metas(ms: tuple[TensorMeta, ...]) -> list[list[Any]]:
    return [[m.name, m.datatype, list(m.shape)] for m in ms]


def _unmetas(rows: list[list[Any]]) -> tuple[TensorMeta, ...]:
    return tuple(TensorMeta(str(n), str(d), tuple(int(x) for x in s)) for n, d, s in rows)


@dataclass(frozen=True)
class Catalog:
    """What a front end needs to check an infer request: the models' signatures, the SLO cap
    and the default SLO (the scheduler process's config)."""

    sigs: dict[str, ModelSig]
    max_slo_ms: float
    default_slo_ms: float

    @classmethod
    def of(cls, gw: Any) -> Catalog:
        """The gateway's served models; one whose signature cannot be derived is left out
        (its requests are forwarded whole, and the full path answers them)."""
        sigs: dict[str, ModelSig] = {}
        for name, info in gw.models.items():
            try:
                sigs[name] = sig_of(info)
            except Exception:  # noqa: BLE001 (any failure: the full path decides)
                log.warning("model %r left out of the front ends' catalog", name, exc_info=True)
        return cls(sigs, float(gw.config.max_slo_ms), float(gw.config.default_slo_ms))

    def encode(self) -> bytes:
        models = {
            n: {"inputs": _metas(s.inputs), "outputs": _metas(s.outputs),
                "versions": list(s.versions), "allow_nan": s.allow_nan}
            for n, s in self.sigs.items()
        }  # fmt: skip
        return orjson.dumps(
            {"models": models, "max_slo_ms": self.max_slo_ms, "default_slo_ms": self.default_slo_ms}
        )

    @classmethod
    def decode(cls, payload: bytes) -> Catalog:
        doc = orjson.loads(payload)
        sigs = {
            n: ModelSig(n, _unmetas(m["inputs"]), _unmetas(m["outputs"]),
                        tuple(m["versions"]), bool(m["allow_nan"]))
            for n, m in doc["models"].items()
        }  # fmt: skip
        return cls(sigs, float(doc["max_slo_ms"]), float(doc["default_slo_ms"]))


# ---------------------------------------------------------------------- front-end side
@dataclass(frozen=True)
class Prepared:
    """An infer request checked and decoded in the front end."""

    model: str
    sig: ModelSig
    req: InferRequest
    slo_ms: float | None


def compact_sig(scope: dict[str, Any], cat: Catalog) -> ModelSig | None:
    """The model's signature when the request takes the compact path (module docstring)."""
    path: str = scope["path"]
    if scope["method"] != "POST" or not path.startswith(_PREFIX) or not path.endswith(_SUFFIX):
        return None
    name = path[len(_PREFIX) : -len(_SUFFIX)]
    sig = cat.sigs.get(name) if "/" not in name else None
    if sig is None:
        return None
    for k, v in scope["headers"]:
        if k == b"content-encoding" and v.strip().lower() not in (b"identity", b""):
            return None
    return sig


def prepare(scope: dict[str, Any], body: bytes, sig: ModelSig, cat: Catalog) -> Prepared:
    """Check and decode the request as `OIPApp` does (OIPError with its status and words)."""
    header_len, slo_header = infer_headers(scope["headers"])
    check_header_len(header_len, body)
    req = parse_rest(body, header_len, sig)
    return Prepared(sig.name, sig, req, request_slo(req, slo_header, cat.max_slo_ms))


def infer_parts(p: Prepared, t_first: float, t_headers: float) -> list[bytes]:
    """The INFER payload's parts."""
    meta = orjson.dumps({"m": p.model, "s": p.slo_ms})
    return [_INFER_HEAD.pack(t_first, t_headers, len(meta)), meta, encode_set(0, 0, p.req.inputs)]


class _Summary:
    """The run's summary as `infer_answer` reads it (the InferResult's fields)."""

    __slots__ = ("variants", "batch_sizes", "queue_ms", "total_ms", "late")

    def __init__(self, meta: dict[str, Any]) -> None:
        self.variants: list[str] = meta["v"]
        self.batch_sizes: list[int] = meta["b"]
        self.queue_ms: float = meta["q"]
        self.total_ms: float = meta["t"]
        self.late: bool = meta["l"]


def result_answer(p: Prepared, payload: bytes, cat: Catalog) -> Answer:
    """The HTTP answer of a RESULT payload."""
    (mlen,) = _RESULT_HEAD.unpack_from(payload, 0)
    o = _RESULT_HEAD.size
    summary = _Summary(orjson.loads(payload[o : o + mlen]))
    named = decode_set(memoryview(payload)[o + mlen + HEADER_SIZE :])
    slo = p.slo_ms if p.slo_ms is not None else cat.default_slo_ms
    try:
        return infer_answer(p.model, p.sig, named, p.req, summary, slo)
    except OIPError as e:  # an output the model did not produce (500)
        return error_answer(e)


# ---------------------------------------------------------------------- scheduler side
def oip_app_of(app: Any) -> Any | None:
    """The OIP app (`tidal.dataplane.http.OIPApp`: `gw` and `refusals`) that `app` is or wraps
    (`oip_app`, as `tidal.control.serve_hook.wrap`'s ClosedLoop, which only adds /dashboard);
    None for any other ASGI app (then every request is forwarded whole)."""
    for a in (app, getattr(app, "oip_app", None)):
        if a is not None and hasattr(a, "gw") and hasattr(a, "refusals"):
            return a
    return None


class CompactInfer:
    """Runs INFER payloads in the scheduler process on an `OIPApp`'s gateway (`app.gw`),
    recording admission refusals in `app.refusals` as `OIPApp` does."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.gw = app.gw
        self.sent: dict[str, ModelSig] = {}

    def hello(self) -> bytes:
        """The catalog to send now (remembered: requests are checked against it)."""
        cat = Catalog.of(self.gw)
        self.sent = cat.sigs
        return cat.encode()

    def stale(self) -> bool:
        """The served model set differs from the catalog last sent."""
        return bool(self.gw.models.keys() != self.sent.keys())

    async def run(self, payload: bytes) -> tuple[int, list[bytes]]:
        """(frame kind, payload parts): RESULT, RESP (a complete answer) or RETRY."""
        t_first, t_headers, mlen = _INFER_HEAD.unpack_from(payload, 0)
        o = _INFER_HEAD.size
        meta = orjson.loads(payload[o : o + mlen])
        gw = self.gw
        name = meta["m"]
        info = gw.models.get(name)
        if info is None:  # unloaded since the catalog: the 404 of the full path
            try:
                oip_serve.resolve(gw, name, None)
            except OIPError as e:
                return resp_parts(error_answer(e))
            return RETRY, []
        sig = sig_of(info)
        sent = self.sent.get(name)
        if sig is not sent and sig != sent:
            return RETRY, []
        inputs = decode_set(memoryview(payload)[o + mlen + HEADER_SIZE :])
        arrival = t_first if isinstance(gw.clock, MonotonicClock) else None
        try:
            named, res, _ = await oip_serve.infer(
                gw, info, InferRequest(inputs), None, meta["s"], arrival
            )
        except OIPError as e:
            if not hasattr(e, "cause"):
                raise
            if e.status == 503:
                self.app.refusals.record("admission", t_headers or None, t_first)
            return resp_parts(refusal_answer(e))
        out = orjson.dumps({"v": res.variants, "b": res.batch_sizes, "q": res.queue_ms,
                            "t": res.total_ms, "l": res.late})  # fmt: skip
        return RESULT, [_RESULT_HEAD.pack(len(out)), out, encode_set(0, 0, named)]


RESP = 2  # tidal.dataplane.frontend's answer frame (status, headers, body)
RESP_HEAD = struct.Struct("<HI")


def headers_blob(headers: Any) -> bytes:
    return b"".join(k + b":" + v + b"\r\n" for k, v in headers)


def parse_headers(blob: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for line in blob.split(b"\r\n"):
        if line:
            k, _, v = line.partition(b":")
            out.append((k, v))
    return out


def resp_parts(answer: Answer) -> tuple[int, list[bytes]]:
    """A RESP frame's payload parts for a complete answer (the content type added)."""
    status, body, headers = answer
    hb = headers_blob(with_content_type(headers))
    return RESP, [RESP_HEAD.pack(status, len(hb)), hb, body]


def parse_resp(payload: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    status, hlen = RESP_HEAD.unpack_from(payload, 0)
    o = RESP_HEAD.size
    return status, parse_headers(payload[o : o + hlen]), payload[o + hlen :]
