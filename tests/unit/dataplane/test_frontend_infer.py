"""tidal.dataplane.frontend_infer: the catalog a front end checks requests against, which
requests take the compact path, and what the scheduler side answers when the catalog is stale
(a model unloaded: the full path's 404; a signature changed: RETRY, the request then goes
whole). The answers of the compact path against the one-process server's are in
tests/integration/test_frontends.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pytest

from tidal.core.tensors import TensorMeta
from tidal.dataplane.frontend_infer import (
    RESP,
    RESULT,
    RETRY,
    Catalog,
    CompactInfer,
    compact_sig,
    infer_parts,
    oip_app_of,
    parse_resp,
    prepare,
    result_answer,
)
from tidal.dataplane.oip import ModelSig, OIPError

SIG = ModelSig(
    "m",
    (TensorMeta("a", "FP32", (-1, 4)), TensorMeta("b", "BYTES", (-1,))),
    (TensorMeta("y", "INT64", (-1, 2)),),
    ("v1", "v2"),
    True,
)


@dataclass(frozen=True)
class _Info:  # the fields tidal.dataplane.oip.sig_of reads
    name: str
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    versions: list[str]
    stages: list[str] = field(default_factory=lambda: ["s"])
    allow_nan: bool = True


@dataclass
class _Config:
    max_slo_ms: float = 1000.0
    default_slo_ms: float = 250.0


@dataclass
class _Result:
    output: np.ndarray
    variants: list[str] = field(default_factory=lambda: ["v1"])
    batch_sizes: list[int] = field(default_factory=lambda: [3])
    queue_ms: float = 0.5
    total_ms: float = 1.5
    late: bool = False


class _Gateway:
    """A stand-in for the gateway's request surface (models, config, clock, infer): the
    scheduler and its workers are exercised by the integration tests."""

    def __init__(self) -> None:
        self.models: dict[str, Any] = {"m": _Info("m", SIG.inputs, SIG.outputs, ["v1", "v2"])}
        self.config = _Config()
        self.clock = None
        self.calls: list[tuple[str, Any, float | None]] = []

    async def infer(self, model: str, x: Any, slo_ms: float | None, **kw: Any) -> _Result:
        self.calls.append((model, x, slo_ms))
        return _Result(np.arange(6, dtype=np.int64).reshape(3, 2))


class _App:
    def __init__(self) -> None:
        self.gw = _Gateway()
        self.refusals = None


def _scope(path: str = "/v2/models/m/infer", method: str = "POST", **hdr: str) -> dict[str, Any]:
    headers = [(k.replace("_", "-").encode(), v.encode()) for k, v in hdr.items()]
    return {"method": method, "path": path, "headers": headers,
            "state": {"tidal.t_first_byte": 1.0, "tidal.t_headers": 1.5}}  # fmt: skip


def _body() -> bytes:
    return orjson.dumps({"inputs": [
        {"name": "b", "datatype": "BYTES", "shape": [3], "data": ["x", "y", "z"]},
        {"name": "a", "datatype": "FP32", "shape": [3, 4], "data": list(range(12))},
    ], "parameters": {"slo_ms": 100}})  # fmt: skip


def test_catalog_round_trip() -> None:
    cat = Catalog({"m": SIG}, 1000.0, 250.0)
    got = Catalog.decode(cat.encode())
    assert got == cat and got.sigs["m"] == SIG


@pytest.mark.parametrize(
    ("scope", "takes"),
    [
        (_scope(), True),
        (_scope(content_encoding="identity"), True),
        (_scope(transfer_encoding="chunked"), True),
        (_scope(content_encoding="gzip"), False),  # decoded by the full path
        (_scope(method="GET"), False),
        (_scope("/v2/models/m/versions/v1/infer"), False),
        (_scope("/v2/models/other/infer"), False),
        (_scope("/v2/models/m"), False),
    ],
)
def test_which_requests_take_the_compact_path(scope: dict[str, Any], takes: bool) -> None:
    cat = Catalog({"m": SIG}, 1000.0, 250.0)
    assert (compact_sig(scope, cat) is SIG) == takes


def test_prepare_checks_as_the_full_path() -> None:
    cat = Catalog({"m": SIG}, 1000.0, 250.0)
    p = prepare(_scope(x_tidal_slo_ms="40"), _body(), SIG, cat)
    assert p.slo_ms == 40.0 and list(p.req.inputs) == ["a", "b"]  # the model's order
    with pytest.raises(OIPError, match="slo_ms must be"):
        prepare(_scope(), _body().replace(b'"slo_ms":100', b'"slo_ms":"x"'), SIG, cat)
    with pytest.raises(OIPError, match="non-empty list") as e:
        prepare(_scope(), b'{"inputs": []}', SIG, cat)
    assert e.value.status == 400
    with pytest.raises(OIPError, match="out of range 1..3"):
        prepare(_scope(inference_header_content_length="9"), b"{ }", SIG, cat)


def test_scheduler_side_runs_and_answers() -> None:
    app = _App()
    ci = CompactInfer(app)
    cat = Catalog.decode(ci.hello())
    p = prepare(_scope(), _body(), cat.sigs["m"], cat)
    kind, parts = asyncio.run(ci.run(b"".join(infer_parts(p, 1.0, 1.5))))
    assert kind == RESULT
    model, x, slo = app.gw.calls[0]
    assert model == "m" and slo == 100.0 and x.names() == ["a", "b"]
    assert np.array_equal(x.tensors["a"], np.arange(12, dtype=np.float32).reshape(3, 4))
    status, body, headers = result_answer(p, b"".join(parts), cat)
    out = orjson.loads(body)
    assert status == 200 and headers == []
    assert out["outputs"] == [{"name": "y", "datatype": "INT64", "shape": [3, 2],
                               "data": [0, 1, 2, 3, 4, 5]}]  # fmt: skip
    assert out["parameters"]["slo_ms"] == 100.0 and out["parameters"]["variant"] == "v1"
    assert not ci.stale()


def test_stale_catalog_unloaded_model_and_changed_signature() -> None:
    app = _App()
    ci = CompactInfer(app)
    cat = Catalog.decode(ci.hello())
    frame = b"".join(infer_parts(prepare(_scope(), _body(), cat.sigs["m"], cat), 1.0, 1.5))
    changed = (TensorMeta("y", "FP32", (-1, 2)),)
    app.gw.models["m"] = _Info("m", SIG.inputs, changed, ["v1", "v2"])
    assert asyncio.run(ci.run(frame)) == (RETRY, [])
    del app.gw.models["m"]
    assert ci.stale()
    kind, parts = asyncio.run(ci.run(frame))
    status, headers, body = parse_resp(b"".join(parts))
    assert kind == RESP and status == 404 and b"unknown model 'm'" in body
    assert (b"content-type", b"application/json") in headers
    assert app.gw.calls == []


def test_oip_app_of() -> None:
    app = _App()

    class Wrapper:  # as tidal.control.serve_hook.wrap's ClosedLoop
        oip_app = app

    assert oip_app_of(app) is app and oip_app_of(Wrapper()) is app and oip_app_of(object()) is None
