"""tidal.dataplane.frontend_codec: a front end's JSON -> binary re-encoding gives the scheduler's
parse_rest the same request (names, shapes, values, parameters), the same refusals, and is
skipped for anything that is not plainly float tensors."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from tidal.core.tensors import TensorMeta
from tidal.dataplane.frontend_codec import json_to_binary
from tidal.dataplane.oip import ModelSig, OIPError, parse_rest

CAP = 1 << 20
PAIR = ModelSig(
    "m",
    (TensorMeta("a", "FP32", (-1, 3)), TensorMeta("b", "FP64", (-1, 2))),
    (TensorMeta("y", "FP32", (-1, 3)),),
    ("1",),
)


def _both(req: dict[str, Any]) -> tuple[Any, Any]:
    body = orjson.dumps(req)
    got = json_to_binary(body, CAP)
    assert got is not None
    out, hlen = got
    return parse_rest(body, None, PAIR), parse_rest(out, hlen, PAIR)


def test_same_request_as_the_json_path() -> None:
    req = {
        "id": "r1",
        "parameters": {"slo_ms": 50},
        "inputs": [
            {"name": "b", "datatype": "FP64", "shape": [2, 2], "data": [[0.1, 2], [3.5, -4e300]]},
            {"name": "a", "datatype": "FP32", "shape": [2, 3], "data": [1, 2.5, 3, 4, 5, 6.25]},
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }
    j, b = _both(req)
    assert j.id == b.id == "r1" and j.parameters == b.parameters
    assert j.outputs == b.outputs and j.binary_default == b.binary_default
    assert list(j.inputs) == list(b.inputs) == ["a", "b"]
    for k in j.inputs:
        assert j.inputs[k].dtype == b.inputs[k].dtype
        np.testing.assert_array_equal(j.inputs[k], b.inputs[k])


@pytest.mark.parametrize(
    "a",
    [
        {"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1e39, 0, 0]},  # -> inf
        {"name": "a", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},  # bad shape
        {"name": "zz", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},  # unknown
    ],
)
def test_same_refusal(a: dict[str, Any]) -> None:
    req = {"inputs": [a, {"name": "b", "datatype": "FP64", "shape": [1, 2], "data": [1, 2]}]}
    body = orjson.dumps(req)
    got = json_to_binary(body, CAP)
    assert got is not None
    with pytest.raises(OIPError) as ej:
        parse_rest(body, None, PAIR)
    with pytest.raises(OIPError) as eb:
        parse_rest(got[0], got[1], PAIR)
    assert (ej.value.status, ej.value.message) == (eb.value.status, eb.value.message)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"inputs": []}',
        b'{"inputs": [{"name": "a", "datatype": "INT32", "shape": [1, 3], "data": [1, 2, 3]}]}',
        b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1, "x", 3]}]}',
        b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, 2, 3]}]}',
        b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [[1], [2, 3]]}]}',
        b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3],'
        b' "parameters": {"binary_data_size": 12}}]}',
    ],
)
def test_anything_else_is_forwarded_unchanged(body: bytes) -> None:
    assert json_to_binary(body, CAP) is None


def test_not_converted_above_the_body_cap() -> None:
    # 1000 zeros: 2 KB of JSON, 8 KB as FP64: under a 4 KB cap it goes as it came.
    body = orjson.dumps(
        {"inputs": [{"name": "a", "datatype": "FP64", "shape": [1, 1000], "data": [0] * 1000}]}
    )
    assert json_to_binary(body, 4096) is None
    assert json_to_binary(body, 16384) is not None
