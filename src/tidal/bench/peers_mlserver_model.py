"""MLServer custom runtime for `tidal bench goodput`: ONNX Runtime on the same file and thread
settings as Tidal's worker, with MLServer's adaptive batching. Copied into the MLServer model
folder and loaded by `mlserver start` inside `.venv-peers/mlserver` (not imported by Tidal).

model-settings.json: `parameters.uri` (ONNX path), `parameters.extra.threads`.
"""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
)


class OnnxModel(MLModel):
    async def load(self) -> bool:
        import onnxruntime as ort

        params = self.settings.parameters
        so = ort.SessionOptions()
        so.intra_op_num_threads = int((params.extra or {}).get("threads", 2))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.sess = ort.InferenceSession(params.uri, so, providers=["CPUExecutionProvider"])
        self.input_name = self.sess.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        y = self.sess.run(None, {self.input_name: x})[0]
        return InferenceResponse(
            model_name=self.settings.name,
            outputs=[NumpyCodec.encode_output(name="output-0", payload=y)],
        )
