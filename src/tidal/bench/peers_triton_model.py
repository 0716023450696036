"""Triton Python-backend model for `tidal bench goodput`: ONNX Runtime on the same file and
thread settings as Tidal's worker. Copied into the Triton model repository as `1/model.py`
and run by Triton's Python backend stub inside `.venv-peers/triton` (not imported by Tidal).

Config parameters (config.pbtxt): `onnx` (path), `threads` (intra-op threads).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        import onnxruntime as ort

        params = json.loads(args["model_config"])["parameters"]
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(params["threads"]["string_value"])
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        path = params["onnx"]["string_value"]
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.name = self.sess.get_inputs()[0].name

    def execute(self, requests: list[Any]) -> list[Any]:
        # One ORT call for the whole dynamic batch, then split rows back per request.
        xs = [pb_utils.get_input_tensor_by_name(r, "input-0").as_numpy() for r in requests]
        y = self.sess.run(None, {self.name: np.concatenate(xs)})[0]
        out, i = [], 0
        for x in xs:
            t = pb_utils.Tensor("output-0", np.ascontiguousarray(y[i : i + len(x)], np.float32))
            out.append(pb_utils.InferenceResponse(output_tensors=[t]))
            i += len(x)
        return out
