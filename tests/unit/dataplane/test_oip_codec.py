"""The transport-neutral OIP codec (tidal.dataplane.oip): every datatype, the binary extension,
requested outputs, classification, and a table of bad requests each naming what is wrong."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest

from tidal.core.tensors import TensorMeta
from tidal.dataplane.oip import (
    InferRequest,
    ModelSig,
    OIPError,
    classify,
    encode_rest,
    parse_rest,
    select_outputs,
)
from tidal.dataplane.tensors import DATATYPES, TensorSet, encode_bytes_tensor

PAIR = ModelSig(
    "pair",
    (TensorMeta("ids", "INT64", (-1, 4)), TensorMeta("mask", "INT64", (-1, 4))),
    (TensorMeta("masked", "INT64", (-1, 4)), TensorMeta("scores", "FP32", (-1, 4))),
    ("1",),
)


def _sig(dt: str) -> ModelSig:
    return ModelSig("m", (TensorMeta("x", dt, (-1, 3)),), (TensorMeta("y", dt, (-1, 3)),), ("1",))


def _json(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


VALUES: dict[str, list[Any]] = {
    "BOOL": [True, False, True], "UINT8": [0, 7, 255], "UINT16": [0, 1, 65535],
    "UINT32": [0, 1, 2**32 - 1], "UINT64": [0, 1, 2**63], "INT8": [-128, 0, 127],
    "INT16": [-5, 0, 5], "INT32": [-(2**31), 0, 2**31 - 1], "INT64": [-(2**62), 0, 2**62],
    "FP16": [0.5, -1.0, 2.0], "FP32": [0.25, 1.5, -3.0], "FP64": [1e-300, 0.0, 1e300],
    "BYTES": ["a", "", "h\u00e9"],
}  # fmt: skip


@pytest.mark.parametrize("dt", list(DATATYPES))
def test_every_datatype_json_and_binary(dt: str) -> None:
    sig = _sig(dt)
    inp = {"name": "x", "datatype": dt, "shape": [1, 3], "data": VALUES[dt]}
    req = parse_rest(_json([inp]), None, sig)
    x = req.inputs["x"]
    assert x.shape == (1, 3) and x.dtype == DATATYPES[dt]
    if dt == "BYTES":
        raw = encode_bytes_tensor(x)
        assert x.reshape(-1).tolist() == [str(v).encode() for v in VALUES[dt]]
    else:
        raw = x.tobytes()
        assert x.reshape(-1).tolist() == VALUES[dt]
    head = _json([{"name": "x", "datatype": dt, "shape": [1, 3],
                   "parameters": {"binary_data_size": len(raw)}}])  # fmt: skip
    breq = parse_rest(head + raw, len(head), sig)
    assert breq.inputs["x"].tolist() == x.tolist()
    # and back out, JSON and binary
    outs = select_outputs(sig, {"y": x}, InferRequest({"x": x}))
    body, hlen = encode_rest("m", "1", outs, None, {})
    assert hlen is None and orjson.loads(body)["outputs"][0]["datatype"] == dt
    outs = select_outputs(sig, {"y": x}, InferRequest({"x": x}, binary_default=True))
    body, hlen = encode_rest("m", "1", outs, "id-1", {})
    assert hlen is not None and body[hlen:] == raw
    assert orjson.loads(body[:hlen])["outputs"][0]["parameters"]["binary_data_size"] == len(raw)


def test_two_inputs_in_model_order_and_requested_outputs() -> None:
    body = _json(
        [
            {"name": "mask", "datatype": "INT64", "shape": [2, 4], "data": [[1] * 4, [0] * 4]},
            {"name": "ids", "datatype": "INT64", "shape": [2, 4], "data": list(range(8))},
        ],
        outputs=[{"name": "scores", "parameters": {"binary_data": True}}],
        id="r1",
    )
    req = parse_rest(body, None, PAIR)
    assert list(req.inputs) == ["ids", "mask"]
    rows = req.rows()
    assert isinstance(rows, TensorSet) and rows.shape == (2,)
    both = np.concatenate([rows, rows])
    assert isinstance(both, TensorSet) and both.shape == (4,) and both[1:3].shape == (2,)
    y = {"masked": np.zeros((2, 4), np.int64), "scores": np.ones((2, 4), np.float32)}
    outs = select_outputs(PAIR, y, req)
    assert [(o.name, o.binary) for o in outs] == [("scores", True)]


def test_classification() -> None:
    y = np.array([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4]], np.float32)
    assert classify(y, 2).tolist() == [
        [b"0.700000:1", b"0.200000:2"],
        [b"0.500000:0", b"0.400000:2"],
    ]
    sig = _sig("FP32")
    req = parse_rest(
        _json([{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": y.ravel().tolist()}],
              outputs=[{"name": "y", "parameters": {"classification": 1}}]),
        None, sig,
    )  # fmt: skip
    (out,) = select_outputs(sig, {"y": y}, req)
    assert out.datatype == "BYTES" and out.array.tolist() == [[b"0.700000:1"], [b"0.500000:0"]]


X = {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}
BAD: list[tuple[str, bytes, int | None, str]] = [
    ("malformed", b"{", None, "malformed JSON"),
    ("not object", b"[1]", None, "JSON object"),
    ("no inputs", b"{}", None, "`inputs` must be a non-empty list"),
    ("empty inputs", _json([]), None, "`inputs` must be a non-empty list"),
    ("input not object", _json([3]), None, "must be an object"),  # type: ignore[list-item]
    ("id not str", _json([X], id=5), None, "`id` must be a string"),
    ("params not object", _json([X], parameters=[1]), None, "`parameters` must be an object"),
    ("unknown input", _json([{**X, "name": "z"}]), None, "unknown input 'z'"),
    ("name not str", _json([{**X, "name": 1}]), None, "input name must be a string"),
    ("twice", _json([X, X]), None, "given twice"),
    ("datatype dict", _json([{**X, "datatype": {}}]), None, "unknown datatype {}"),
    ("datatype wrong", _json([{**X, "datatype": "FP64"}]), None, "does not match the model's FP32"),
    ("shape str", _json([{**X, "shape": "13"}]), None, "shape must be a list"),
    ("shape neg", _json([{**X, "shape": [1, -3]}]), None, "shape must be a list"),
    ("fixed dim", _json([{**X, "shape": [1, 4]}]), None, "does not match the model's [-1, 3]"),
    ("batch 0", _json([{**X, "shape": [0, 3], "data": []}]), None, "batch 1..1024"),
    ("count", _json([{**X, "data": [1.0]}]), None, "needs 3"),
    ("strings in FP32", _json([{**X, "data": ["1", "2", "3"]}]), None, "not all FP32"),
    ("ragged", _json([{**X, "data": [[1.0], [2.0, 3.0]]}]), None, "not a regular list"),
    ("data not list", _json([{**X, "data": 3}]), None, "`data` must be a list"),
    ("overflow to inf", _json([{**X, "data": [1e39, 0, 0]}]), None, "NaN or infinity"),
    ("binary without header", _json([{**X, "parameters": {"binary_data_size": 12}}]), None,
     "without Inference-Header-Content-Length"),
    ("unknown output", _json([X], outputs=[{"name": "nope"}]), None, "unknown output 'nope'"),
    ("binary_data not bool", _json([X], outputs=[{"name": "y", "parameters": {"binary_data": 1}}]),
     None, "binary_data must be true or false"),
    ("class_count negative", _json([X], outputs=[{"name": "y", "parameters": {"class_count": -1}}]),
     None, "class_count must be an int >= 0"),
    ("outputs not list", _json([X], outputs={"name": "y"}), None, "`outputs` must be a list"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "body", "hlen", "msg"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests_name_the_problem(label: str, body: bytes, hlen: int | None, msg: str) -> None:
    with pytest.raises(OIPError) as e:
        parse_rest(body, hlen, _sig("FP32"))
    assert e.value.status == 400 and msg in e.value.message, (label, e.value.message)


def test_binary_sizes_checked_and_nan_allowed_by_config() -> None:
    head = _json([{"name": "x", "datatype": "FP32", "shape": [1, 3],
                   "parameters": {"binary_data_size": 12}}])  # fmt: skip
    nan = np.array([np.nan, 0, 0], np.float32).tobytes()
    with pytest.raises(OIPError, match="NaN or infinity"):
        parse_rest(head + nan, len(head), _sig("FP32"))
    allow = ModelSig("m", _sig("FP32").inputs, _sig("FP32").outputs, ("1",), allow_nan=True)
    assert np.isnan(parse_rest(head + nan, len(head), allow).inputs["x"][0, 0])
    with pytest.raises(OIPError, match="exceeds the 8 bytes left"):
        parse_rest(head + nan[:8], len(head), _sig("FP32"))
    with pytest.raises(OIPError, match="4 bytes of binary data not claimed"):
        parse_rest(head + bytes(12) + b"1234", len(head), _sig("FP32"))
    bhead = _json([{"name": "x", "datatype": "BYTES", "shape": [1, 3],
                    "parameters": {"binary_data_size": 6}}])  # fmt: skip
    with pytest.raises(OIPError, match="BYTES"):
        parse_rest(bhead + b"\x09\x00\x00\x00ab", len(bhead), _sig("BYTES"))


@pytest.mark.parametrize(
    ("dt", "data", "msg"),
    [
        ("INT8", [1, 2, 128], "value 128 out of range for INT8"),
        ("UINT8", [-1, 2, 3], "value -1 out of range for UINT8"),
        ("UINT64", [2**64, 0, 0], "not all UINT64"),  # JSON parses it as a float
        ("INT64", [1.5, 0, 0], "not all INT64"),
        ("BOOL", [1, 0, 1], "not all BOOL"),
        ("BYTES", [1, 2, 3], "BYTES element 0 is int"),
    ],
)
def test_element_kinds_and_ranges(dt: str, data: list[Any], msg: str) -> None:
    body = _json([{"name": "x", "datatype": dt, "shape": [1, 3], "data": data}])
    with pytest.raises(OIPError, match=msg.replace("[", "\\[")):
        parse_rest(body, None, _sig(dt))


@pytest.mark.parametrize(
    ("dt", "data", "ok"),
    [
        ("FP16", [65504.0, -65504.0, 0.0], True),  # the largest finite FP16, both signs
        ("FP16", [70000.0, 0.0, 0.0], False),  # -> inf in FP16
        ("FP16", [40000.0, 40000.0, 0.0], True),  # magnitudes sum past the range, each fits
        ("FP32", [3.4e38, -3.4e38, 1.0], True),
        ("FP32", [1e39, 0.0, 0.0], False),
        ("FP64", [1.7e308, 1.7e308, -1.0], True),  # no overflow (or warning) on the way
        ("FP32", [0.5, -0.25, 1e-45], True),
    ],
)
def test_json_float_range_and_finiteness(dt: str, data: list[float], ok: bool) -> None:
    """The JSON float decode's one-reduction fast path (issue 14) accepts exactly what the
    cast-then-check path accepts: values in range are kept as the cast gives them, an
    overflow to inf is refused (and kept as inf when the model allows NaN/inf)."""
    body = _json([{"name": "x", "datatype": dt, "shape": [1, 3], "data": data}])
    with np.errstate(over="ignore"):
        want = np.asarray(data).astype(DATATYPES[dt]).reshape(1, 3)
    if ok:
        got = parse_rest(body, None, _sig(dt)).inputs["x"]
        assert got.dtype == DATATYPES[dt] and np.array_equal(got, want)
        return
    with pytest.raises(OIPError, match="NaN or infinity"):
        parse_rest(body, None, _sig(dt))
    allow = ModelSig("m", _sig(dt).inputs, _sig(dt).outputs, ("1",), allow_nan=True)
    got = parse_rest(body, None, allow).inputs["x"]
    assert np.isinf(got[0, 0]) and np.array_equal(got[0, 1:], want[0, 1:])
