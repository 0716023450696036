"""Wire frames of the CEP queues: data frames (events) and control frames (handover).

Every queue element is one frame whose first byte says what it holds:

- ``J`` + UTF-8 JSON: one event (a JSON object) or a batch (a JSON array of objects);
- ``P`` + raw little-endian records of a numpy structured dtype: one record or a batch;
- ``\\x00`` + ASCII: a control frame (``\\x00H<instance>``: hand over to `instance`).

The *faithful* mode (CEPless) puts one event per element; the *blob* mode one batch per
element. Decoding never unpickles: JSON or fixed-width records only. Network input is
capped at `MAX_FRAME_BYTES`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from tidal.core.errors import TidalError

Batch = np.ndarray | list[dict[str, Any]]
CodecName = Literal["json", "packed"]
Mode = Literal["faithful", "blob"]

MAX_FRAME_BYTES = 64 * 1024 * 1024
CTRL = b"\x00"
HANDOVER = b"\x00H"

# The credit-card transaction record used by the workload and the example operators.
TXN_DTYPE = np.dtype(
    [
        ("seq", "<i8"),
        ("card", "<i8"),
        ("ts", "<f8"),
        ("amount", "<f8"),
        ("merchant", "<i4"),
        ("flag", "<i4"),
    ]
)


def is_control(frame: bytes) -> bool:
    """True for a control frame (first byte NUL)."""
    return frame[:1] == CTRL


def handover_frame(instance: str) -> bytes:
    """The in-band barrier telling the current operator to hand over to `instance`."""
    return HANDOVER + instance.encode()


def swap_prepare_frame(instance: str, env: dict[str, str], source: str) -> bytes:
    """`\0P` + JSON: load version `instance` (its environment, its source) beside the running
    one, in the same Node.js runtime (docs/cep-protocol.md, step 7b)."""
    msg = {"instance": instance, "env": env, "source": source}
    return CTRL + b"P" + json.dumps(msg).encode()


def swap_frame(instance: str) -> bytes:
    """`\0W<instance>`: the barrier of an in-place update to the prepared `instance`."""
    return CTRL + b"W" + instance.encode()


class Codec:
    """Encodes batches into frames and decodes frames into one batch.

    `packed` batches are numpy structured arrays of `dtype`; `json` batches are lists of
    dicts. `required` names fields every event must carry (checked on encode of dicts).
    """

    def __init__(
        self,
        name: CodecName = "json",
        dtype: np.dtype | None = None,
        required: Sequence[str] = (),
    ) -> None:
        if name not in ("json", "packed"):
            raise TidalError(f"codec must be 'json' or 'packed', got {name!r}")
        self.name: CodecName = name
        self.dtype = np.dtype(dtype) if dtype is not None else TXN_DTYPE
        self.required = (
            tuple(required)
            if required
            else (tuple(self.dtype.names or ()) if name == "packed" else ())
        )

    # -- host side: dict events -> batch ------------------------------------------------
    def validate(self, event: dict[str, Any]) -> None:
        """Raise TidalError naming the first missing required field of `event`."""
        if not isinstance(event, dict):
            raise TidalError(f"event must be a JSON object, got {type(event).__name__}")
        for f in self.required:
            if f not in event:
                raise TidalError(f"event {event!r} is missing field {f!r}")

    def from_dicts(self, events: Sequence[dict[str, Any]]) -> Batch:
        """Turn validated dict events into a batch of this codec."""
        if self.name == "json":
            return list(events)
        names = self.dtype.names or ()
        arr = np.zeros(len(events), dtype=self.dtype)
        for i, ev in enumerate(events):
            arr[i] = tuple(ev.get(n, 0) for n in names)
        return arr

    def to_dicts(self, batch: Batch) -> list[dict[str, Any]]:
        """The events of `batch` as dicts (JSON-native values)."""
        if isinstance(batch, np.ndarray):
            names = batch.dtype.names or ()
            return [dict(zip(names, row.tolist(), strict=True)) for row in batch]
        return list(batch)

    def empty(self) -> Batch:
        return np.zeros(0, dtype=self.dtype) if self.name == "packed" else []

    # -- frames -------------------------------------------------------------------------
    def encode(self, batch: Batch, mode: Mode) -> list[bytes]:
        """Frames for `batch`: one per event (faithful) or one for all (blob, if non-empty)."""
        n = len(batch)
        if n == 0:
            return []
        if isinstance(batch, np.ndarray):
            raw = np.ascontiguousarray(batch).tobytes()
            if mode == "blob":
                return [b"P" + raw]
            w = batch.dtype.itemsize
            return [b"P" + raw[i * w : (i + 1) * w] for i in range(n)]
        if mode == "blob":
            return [b"J" + json.dumps(batch, separators=(",", ":")).encode()]
        return [b"J" + json.dumps(ev, separators=(",", ":")).encode() for ev in batch]

    def decode(self, frames: Sequence[bytes]) -> Batch:
        """One batch from data frames (control frames must be filtered out first)."""
        if not frames:
            return self.empty()
        kind = frames[0][:1]
        if kind == b"P":
            raw = b"".join(f[1:] for f in frames)
            if len(raw) % self.dtype.itemsize:
                raise TidalError(
                    f"packed frame of {len(raw)} bytes is not a multiple of the record "
                    f"size {self.dtype.itemsize}"
                )
            return np.frombuffer(raw, dtype=self.dtype)
        out: list[dict[str, Any]] = []
        for f in frames:
            if len(f) > MAX_FRAME_BYTES:
                raise TidalError(f"frame of {len(f)} bytes exceeds {MAX_FRAME_BYTES}")
            if f[:1] != b"J":
                raise TidalError(f"unknown frame kind {f[:1]!r}")
            v = json.loads(f[1:])
            if isinstance(v, list):
                out.extend(v)
            else:
                out.append(v)
        return out

    def count(self, frame: bytes) -> int:
        """Number of events in one data frame."""
        if frame[:1] == b"P":
            return (len(frame) - 1) // self.dtype.itemsize
        v = json.loads(frame[1:])
        return len(v) if isinstance(v, list) else 1
