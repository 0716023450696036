"""JSON tensors to binary in the HTTP front ends (tidal.dataplane.frontend), before forwarding.

`json_to_binary(body)` turns an OIP v2 JSON infer body whose inputs are all FP16/FP32/FP64
`data` lists into the same request in the binary tensor extension (each input's `data`
replaced by `parameters.binary_data_size`, the little-endian bytes after the JSON header), so
the scheduler process reads the tensors with `np.frombuffer` instead of parsing numbers.

It is an optimization with a conservative gate, never a second validator: it returns None
(forward the body unchanged, the scheduler's `tidal.dataplane.oip.parse_rest` answers as it
always does) for anything that is not plainly such a request: malformed JSON, an input of
another datatype, `data` that is not a regular list of numbers whose count is the shape's
product, a `binary_data_size` already present, or a result above the body cap `cap` (the JSON
body passed the cap: its re-encoding must not be refused for a size the client did not
send). For what it converts, `parse_rest` sees the same
names, shapes, datatypes, values (the same float cast, overflow to inf included) and
parameters, so its checks and answers are those of the JSON path.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from tidal.dataplane.tensors import DATATYPES

_FLOATS = ("FP16", "FP32", "FP64")


def _blob(inp: Any) -> tuple[dict[str, Any], bytes] | None:
    """One input entry without `data`, and its bytes; None when it is not plainly floats."""
    if not isinstance(inp, dict) or inp.get("datatype") not in _FLOATS:
        return None
    data, shape, params = inp.get("data"), inp.get("shape"), inp.get("parameters", {})
    if not isinstance(data, list) or not isinstance(shape, list) or not isinstance(params, dict):
        return None
    if "binary_data_size" in params:
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return None
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        return None
    if raw.dtype.kind not in "fi" or raw.size != math.prod(shape):
        return None
    with np.errstate(over="ignore"):  # overflow -> inf, refused by the scheduler as in JSON
        b = raw.astype(DATATYPES[inp["datatype"]], copy=False).tobytes()
    entry = {k: v for k, v in inp.items() if k != "data"}
    entry["parameters"] = {**params, "binary_data_size": len(b)}
    return entry, b


def json_to_binary(body: bytes, cap: int) -> tuple[bytes, int] | None:
    """(binary-extension body, JSON header length), or None to forward `body` unchanged."""
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(req, dict):
        return None
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        return None
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for inp in inputs:
        got = _blob(inp)
        if got is None:
            return None
        entries.append(got[0])
        blobs.append(got[1])
    head = orjson.dumps({**req, "inputs": entries})
    out = b"".join([head, *blobs])
    if len(out) > cap:
        return None
    return out, len(head)


__all__ = ["json_to_binary"]
