"""Tiny ONNX models built with onnx.helper for the repository tests (no torch, no sklearn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper


def tiny_model(path: Path, n_in: int = 4, n_out: int = 3, *, scale: float = 2.0) -> Path:
    """y = (x * scale) @ W: input X float32 (batch, n_in), output Y (batch, n_out)."""
    w = helper.make_tensor(
        "W", TensorProto.FLOAT, [n_in, n_out], np.ones((n_in, n_out), np.float32).ravel()
    )
    s = helper.make_tensor("S", TensorProto.FLOAT, [], [scale])
    g = helper.make_graph(
        [
            helper.make_node("Mul", ["X", "S"], ["XS"]),
            helper.make_node("MatMul", ["XS", "W"], ["Y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", n_out])],
        [w, s],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(path))
    return path


def two_input_model(path: Path, seq: int | str = 8) -> Path:
    """ids int64 (batch, seq) and mask int64 (batch, seq) -> out float32 (batch, seq)."""
    g = helper.make_graph(
        [
            helper.make_node("Mul", ["ids", "mask"], ["m"]),
            helper.make_node("Cast", ["m"], ["out"], to=TensorProto.FLOAT),
        ],
        "two",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", seq]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", seq]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", seq])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(path))
    return path
