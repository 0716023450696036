"""Named tensors and the Open Inference Protocol (OIP v2) datatypes.

`DATATYPES` maps every OIP datatype to its numpy dtype; BYTES is a numpy object array whose
elements are `bytes`. `TensorSet` is an ordered set of named arrays sharing the leading (batch)
dimension: what a multi-input request carries through the data plane, and what a multi-output
model answers. It duck-types the three things the batcher does to a request's rows, so the
scheduler needs no special case:

    x.shape[0]                      # rows of the request
    np.concatenate([x1, x2, ...])   # one batch (via __array_function__)
    y[a:b]                          # this request's rows of the batch output

`rows(x)`, `concat_rows(xs)` and `slice_rows(y, a, b)` do the same for a TensorSet or an ndarray.
BYTES in the binary extension: each element is a 4-byte little-endian length, then its bytes,
in row-major order (`encode_bytes_tensor` / `decode_bytes_tensor`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("bool"), "UINT8": np.dtype("uint8"), "UINT16": np.dtype("uint16"),
    "UINT32": np.dtype("uint32"), "UINT64": np.dtype("uint64"), "INT8": np.dtype("int8"),
    "INT16": np.dtype("int16"), "INT32": np.dtype("int32"), "INT64": np.dtype("int64"),
    "FP16": np.dtype("float16"), "FP32": np.dtype("float32"), "FP64": np.dtype("float64"),
    "BYTES": np.dtype(object),
}  # fmt: skip
OIP_NAME: dict[np.dtype, str] = {v: k for k, v in DATATYPES.items()}
_LEN = struct.Struct("<I")


class TensorError(ValueError):
    """A tensor that cannot be decoded (the message names the tensor and the value)."""


def oip_datatype(dtype: np.dtype) -> str:
    """The OIP datatype name of a numpy dtype (str/bytes/object arrays are BYTES)."""
    dt = np.dtype(dtype)
    if dt.kind in "OSU":
        return "BYTES"
    try:
        return OIP_NAME[dt]
    except KeyError:
        raise TensorError(f"numpy dtype {dt} has no OIP datatype") from None


def to_bytes_array(values: Any, shape: Sequence[int]) -> np.ndarray:
    """An object array of `bytes` (str elements are UTF-8 encoded) with `shape`."""
    flat = np.asarray(values, dtype=object).reshape(-1)
    out = np.empty(flat.size, dtype=object)
    for i, v in enumerate(flat):
        if isinstance(v, bytes):
            out[i] = v
        elif isinstance(v, str):
            out[i] = v.encode()
        elif isinstance(v, np.bytes_ | bytearray | memoryview):
            out[i] = bytes(v)
        else:
            raise TensorError(f"BYTES element {i} is {type(v).__name__}, not a string")
    return out.reshape(tuple(shape))


def encode_bytes_tensor(arr: np.ndarray) -> bytes:
    """The binary-extension form of a BYTES tensor: length-prefixed elements, row-major."""
    parts: list[bytes] = []
    for v in arr.reshape(-1):
        b = v if isinstance(v, bytes) else str(v).encode()
        parts.append(_LEN.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def decode_bytes_tensor(buf: bytes | bytearray | memoryview, count: int) -> np.ndarray:
    """`count` length-prefixed elements from `buf` (exactly); TensorError otherwise."""
    out = np.empty(count, dtype=object)
    pos, n = 0, len(buf)
    mv = memoryview(buf)
    for i in range(count):
        if pos + 4 > n:
            raise TensorError(f"BYTES data ends before element {i} of {count}")
        (k,) = _LEN.unpack_from(mv, pos)
        pos += 4
        if pos + k > n:
            raise TensorError(f"BYTES element {i} claims {k} bytes, {n - pos} left")
        out[i] = bytes(mv[pos : pos + k])
        pos += k
    if pos != n:
        raise TensorError(f"BYTES data has {n - pos} bytes after its {count} elements")
    return out


class TensorSet:
    """Ordered named arrays with a common leading dimension (see the module docstring)."""

    __slots__ = ("tensors",)

    def __init__(self, tensors: dict[str, np.ndarray]) -> None:
        if not tensors:
            raise TensorError("a TensorSet needs at least one tensor")
        rows = {int(a.shape[0]) if a.ndim else -1 for a in tensors.values()}
        if len(rows) != 1 or -1 in rows:
            got = {k: list(a.shape) for k, a in tensors.items()}
            raise TensorError(f"tensors must share their first (batch) dimension, got {got}")
        self.tensors = tensors

    @property
    def shape(self) -> tuple[int]:
        """(rows,): the batch dimension, as the scheduler reads `x.shape[0]`."""
        return (int(next(iter(self.tensors.values())).shape[0]),)

    @property
    def ndim(self) -> int:
        """The largest rank of the tensors (>= 1: every tensor has the batch dimension)."""
        return max(a.ndim for a in self.tensors.values())

    @property
    def nbytes(self) -> int:
        """Bytes of all tensors (BYTES elements counted by their length)."""
        total = 0
        for a in self.tensors.values():
            if a.dtype.kind == "O":
                total += sum(len(v) if isinstance(v, bytes | str) else 8 for v in a.reshape(-1))
            else:
                total += a.nbytes
        return total

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice) -> TensorSet:
        if not isinstance(key, slice):
            raise TypeError("a TensorSet is sliced by rows only (y[a:b])")
        return TensorSet({k: a[key] for k, a in self.tensors.items()})

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def names(self) -> list[str]:
        return list(self.tensors)

    def items(self) -> list[tuple[str, np.ndarray]]:
        return list(self.tensors.items())

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        if func is np.concatenate and not kwargs.get("axis"):
            return concat_rows(list(args[0]))
        return NotImplemented

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {a.dtype}{list(a.shape)}" for k, a in self.tensors.items())
        return f"TensorSet({inner})"


Rows = np.ndarray | TensorSet


def rows(x: Rows) -> int:
    """Rows (batch dimension) of a request's tensors."""
    return int(x.shape[0])


def concat_rows(xs: Sequence[Rows]) -> Rows:
    """One batch from several requests' tensors (same names, same kinds)."""
    if len(xs) == 1:
        return xs[0]
    if all(isinstance(x, np.ndarray) for x in xs):
        return np.concatenate(xs)  # type: ignore[arg-type]
    first = xs[0]
    if not isinstance(first, TensorSet) or not all(isinstance(x, TensorSet) for x in xs):
        raise TensorError("cannot batch named tensor sets with plain arrays")
    names = first.names()
    for x in xs:
        if x.names() != names:  # type: ignore[union-attr]
            raise TensorError(f"cannot batch tensor sets {names} and {x.names()}")  # type: ignore[union-attr]
    return TensorSet({k: np.concatenate([x.tensors[k] for x in xs]) for k in names})  # type: ignore[union-attr]


def slice_rows(y: Rows, a: int, b: int) -> Rows:
    return y[a:b]


def as_named(y: Rows, names: Sequence[str]) -> dict[str, np.ndarray]:
    """A model's outputs by name: a TensorSet as is, a single array under `names[0]`."""
    if isinstance(y, TensorSet):
        return dict(y.tensors)
    return {names[0] if names else "output-0": y}
