"""Tensor metadata shared by the model repository, the data plane and the protocol layer.

`TensorMeta(name, datatype, shape)`: `datatype` is an Open Inference Protocol v2 name ("FP32",
"INT64", "BYTES", ...), `shape` includes the batch dimension, -1 for a dynamic dimension (as in
the OIP model metadata response). `OIP_TO_NUMPY` / `NUMPY_TO_OIP` map datatypes; BYTES has no
fixed-width numpy dtype (object arrays of bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

OIP_TO_NUMPY: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64", "BYTES": "object",
}  # fmt: skip
NUMPY_TO_OIP: dict[str, str] = {v: k for k, v in OIP_TO_NUMPY.items()}


@dataclass(frozen=True)
class TensorMeta:
    """One named input or output of a model: OIP datatype and shape (batch dim first, -1 =
    dynamic)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape without the batch dimension."""
        return self.shape[1:]

    @property
    def numpy_dtype(self) -> str:
        """The numpy dtype name ("object" for BYTES)."""
        return OIP_TO_NUMPY[self.datatype]

    def to_json(self) -> dict[str, object]:
        """The OIP metadata form: {"name", "datatype", "shape"}."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


__all__ = ["NUMPY_TO_OIP", "OIP_TO_NUMPY", "TensorMeta"]
