"""The operator contract of the Python SDK.

An operator is a class deriving from `Operator` in a Python file; the file names it with a
module-level `OPERATOR = MyOperator` (or defines `make_operator()`). The runtime calls
`process(batch)` with up to B events: a numpy structured array for the ``packed`` codec, a
list of dicts for ``json``. `process` returns the output batch of the same kind (possibly
empty). Keyed state lives in the operator; `snapshot()` / `restore()` carry it across a hot
update (bytes, never pickle). A version that sets `empty_state = True` starts from nothing.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tidal.cep.codec import Batch
from tidal.core.errors import TidalError


class Operator:
    """Base class of user operators. Default behaviour: forward every event unchanged."""

    #: Fields every event must carry (json codec); events without them are parked.
    required: tuple[str, ...] = ()
    #: True: a hot update to this version does not restore the old version's state.
    empty_state: bool = False

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def process(self, batch: Batch) -> Batch:
        """Return the outputs of `batch` (same kind as the input)."""
        return batch

    def snapshot(self) -> bytes:
        """Serialize keyed state (default: JSON of `self.state`)."""
        return json.dumps(self.state, separators=(",", ":")).encode()

    def restore(self, data: bytes) -> None:
        """Load state produced by `snapshot()` of this or an older version."""
        self.state = json.loads(data) if data else {}


class DenseKeyedState:
    """Keyed state for integer keys 0..n-1 as numpy columns: vectorized get/put.

    Snapshot format: a JSON header and the raw columns (no pickle), so it is safe to move
    between processes and restores with one copy. Grows when a key >= capacity is written.
    """

    def __init__(
        self, capacity: int, fields: dict[str, str], fill: dict[str, float] | None = None
    ) -> None:
        self.fill = dict(fill or {})
        self.cols = {k: np.full(capacity, self.fill.get(k, 0), dtype=v) for k, v in fields.items()}

    @property
    def capacity(self) -> int:
        return len(next(iter(self.cols.values())))

    def ensure(self, max_key: int) -> None:
        cap = self.capacity
        if max_key < cap:
            return
        new = max(max_key + 1, 2 * cap)
        for k, col in self.cols.items():
            grown = np.full(new, self.fill.get(k, 0), dtype=col.dtype)
            grown[:cap] = col
            self.cols[k] = grown

    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.cols.values())

    def snapshot(self) -> bytes:
        """``TDKS1`` + u32 header length + JSON header + raw little-endian columns."""
        header = [[k, c.dtype.str, c.nbytes] for k, c in self.cols.items()]
        h = json.dumps({"cols": header, "fill": self.fill}).encode()
        return b"".join(
            [_MAGIC, len(h).to_bytes(4, "little"), h, *(c.tobytes() for c in self.cols.values())]
        )

    def restore(self, data: bytes) -> None:
        if data[: len(_MAGIC)] != _MAGIC:
            raise TidalError("state snapshot is not a DenseKeyedState snapshot")
        n = int.from_bytes(data[5:9], "little")
        meta = json.loads(data[9 : 9 + n])
        pos = 9 + n
        cols = {}
        for name, dt, nbytes in meta["cols"]:
            dtype = np.dtype(dt)
            if dtype.hasobject:
                raise TidalError(f"state column {name!r} has an object dtype")
            cols[str(name)] = np.frombuffer(
                data, dtype=dtype, count=nbytes // dtype.itemsize, offset=pos
            ).copy()
            pos += nbytes
        self.cols = cols
        self.fill = dict(meta.get("fill", {}))


_MAGIC = b"TDKS1"


def load_operator(path: str | Path) -> Operator:
    """Import the operator file at `path` and instantiate its operator.

    Raises TidalError naming the file when it is missing or defines no operator.
    """
    p = Path(path)
    if not p.is_file():
        raise TidalError(f"operator source not found: {p}")
    mod_name = f"tidal_user_operator_{abs(hash(str(p.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, p)
    if spec is None or spec.loader is None:
        raise TidalError(f"cannot import operator source {p}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    spec.loader.exec_module(mod)
    if hasattr(mod, "make_operator"):
        op = mod.make_operator()
    elif hasattr(mod, "OPERATOR"):
        op = mod.OPERATOR()
    else:
        raise TidalError(f"operator source {p} defines neither OPERATOR nor make_operator()")
    if not isinstance(op, Operator):
        raise TidalError(f"operator in {p} is a {type(op).__name__}, not a tidal Operator")
    return op
