"""Tiny ONNX models built here with onnx.helper (no torch, no zoo) for the protocol tests, and
a model repository in Triton's layout holding them.

- `pair`: two INT64 inputs `input_ids`, `attention_mask` [-1, 4] -> `masked` INT64 (their
  product) and `scores` FP32 (the same, cast): a BERT-shaped two-input, two-output model;
- `clf` versions 1 and 2: `x` FP32 [-1, 4] -> `probs` FP32 [-1, 3] (x @ W, W differs by version,
  so a pinned version is visible in the answer);
- `text`: `text` BYTES [-1, 1] -> `echo` BYTES (Identity on strings).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

W = {
    1: np.arange(12, dtype=np.float32).reshape(4, 3),
    2: -np.arange(12, dtype=np.float32).reshape(4, 3),
}


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def pair_model(path: Path) -> None:
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", 4])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", 4])
    masked = helper.make_tensor_value_info("masked", TensorProto.INT64, ["N", 4])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4])
    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["masked"]),
        helper.make_node("Cast", ["masked"], ["scores"], to=TensorProto.FLOAT),
    ]
    _save(helper.make_graph(nodes, "pair", [ids, mask], [masked, scores]), path)


def clf_model(path: Path, version: int) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])
    w = numpy_helper.from_array(W[version], "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["probs"])]
    _save(helper.make_graph(nodes, "clf", [x], [y], initializer=[w]), path)


def text_model(path: Path) -> None:
    t = helper.make_tensor_value_info("text", TensorProto.STRING, ["N", 1])
    e = helper.make_tensor_value_info("echo", TensorProto.STRING, ["N", 1])
    nodes = [helper.make_node("Identity", ["text"], ["echo"])]
    _save(helper.make_graph(nodes, "text", [t], [e]), path)


def build_repository(root: Path, text: bool = True) -> Path:
    """REPO/<model>/<version>/model.onnx for pair, clf (1, 2) and (optionally) text."""
    pair_model(root / "pair" / "1" / "model.onnx")
    clf_model(root / "clf" / "1" / "model.onnx", 1)
    clf_model(root / "clf" / "2" / "model.onnx", 2)
    if text:
        text_model(root / "text" / "1" / "model.onnx")
    return root
