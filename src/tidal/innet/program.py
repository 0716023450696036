"""Per-switch programs as data: parser accepts, window registers, staged tables, emit.

A program is what the mapper produces and what both the emulator (switch.py) and the P4
emitter (p4.py) consume. Fields are named integer vectors in the packet header vector (PHV).

Table kinds (each applies one action; `ops` counts the ALU operations of that action):
- `lut`:  key = one element of a field; the entry for key value v adds `entries[v - lo]` (a
          row of G constants) to G destination elements. Multiplication by a lookup: the
          strict-ASIC way (no variable x variable multiply).
- `mac`:  dst[d] += src[k] * w[d] for G destinations (only outside strict-ASIC mode).
- `add`:  dst[d] += src[s] elementwise (lane reduction, adder tree).
- `requant`: dst[d] = clip(floor((src[s] + bias[d] + 2^(shift-1)) / 2^shift), 0, 127).
- `sign`: dst[d] = 1 if src[s] + bias[d] >= 0 else 0 (binarized activation).
- `bias`: dst[d] = src[s] + bias[d] (final logits).
- `max`:  dst[d] = max(src[s], src[s2]) (max-pool).
- `verdict`: dst[0] = 1 if src[1] > src[0] else 0.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tidal.core.errors import TidalError

STREAM_BYTES, STREAM_IAT, STREAM_VERDICT = 0, 1, 255
HOST = -1  # next hop id of the collector


@dataclass
class Table:
    """One match-action table (see module docstring for the kinds)."""

    name: str
    kind: str
    dst: str
    dst_idx: list[int]
    src: str = ""
    src_idx: list[int] = field(default_factory=list)
    src2_idx: list[int] = field(default_factory=list)
    key: int = -1  # element of `src` used as the key (lut) or multiplicand (mac)
    lo: int = 0
    entries: Any = field(default_factory=list)  # lut rows: (domain, G) ints (list or ndarray)
    weights: list[int] = field(default_factory=list)  # mac constants
    bias: list[int] = field(default_factory=list)
    shift: int = 0

    @property
    def ops(self) -> int:
        return 1 if self.kind == "verdict" else len(self.dst_idx)


@dataclass
class Accept:
    """An input stream this switch accepts and where its elements land in `in`."""

    stream: int
    replica: int
    offset: int
    length: int
    mode: str  # "concat" or "sum"
    width: int  # bytes per element on the wire
    frags: int  # frames per sample


@dataclass
class Emit:
    """The output stream: which field, which stream id / replica, how it is framed."""

    field: str
    length: int
    stream: int
    replica: int
    width: int
    frag_elems: int  # elements per frame (header-bit budget)
    next_hops: list[int]


@dataclass
class SwitchProgram:
    """Everything one switch runs. `stages[i]` holds the tables of match-action stage i+1
    (stage 0 is the parser + window register stage)."""

    switch_id: int
    name: str
    layers: list[str]
    accepts: list[Accept]
    input_size: int
    slots: int
    stages: list[list[Table]]
    emit: Emit
    fields: dict[str, int]  # PHV field name -> number of elements
    header_bits: int = 0
    register_bytes: int = 0

    @property
    def n_stages(self) -> int:
        return 1 + len(self.stages)

    @property
    def max_ops(self) -> int:
        return max((t.ops for st in self.stages for t in st), default=0)

    @property
    def window(self) -> int:
        return sum(a.frags for a in self.accepts)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for st in d["stages"]:
            for t in st:
                if isinstance(t["entries"], np.ndarray):
                    t["entries"] = t["entries"].tolist()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SwitchProgram:
        try:
            return cls(
                switch_id=d["switch_id"],
                name=d["name"],
                layers=list(d["layers"]),
                accepts=[Accept(**a) for a in d["accepts"]],
                input_size=d["input_size"],
                slots=d["slots"],
                stages=[[Table(**t) for t in st] for st in d["stages"]],
                emit=Emit(**d["emit"]),
                fields=dict(d["fields"]),
                header_bits=d.get("header_bits", 0),
                register_bytes=d.get("register_bytes", 0),
            )
        except (KeyError, TypeError) as e:
            raise TidalError(f"invalid switch program: {e}") from e


@dataclass
class Mapping:
    """A whole network mapped onto switches, plus the entry points of the feeder."""

    programs: list[SwitchProgram]
    entry: dict[int, list[int]]  # input stream -> switch ids that accept it
    strict_asic: bool
    input_frag: int = 68  # packet bytes per feeder frame (the header-bit budget)

    @property
    def max_stages(self) -> int:
        return max(p.n_stages for p in self.programs)

    @property
    def header_bits(self) -> int:
        return max(p.header_bits for p in self.programs)

    @property
    def register_bytes(self) -> int:
        return max(p.register_bytes for p in self.programs)

    def summary(self) -> dict[str, Any]:
        return {
            "switches": len(self.programs),
            "max_stages_per_switch": self.max_stages,
            "header_bits": self.header_bits,
            "register_bytes": self.register_bytes,
            "strict_asic": self.strict_asic,
            "per_switch": [
                {
                    "id": p.switch_id,
                    "name": p.name,
                    "layers": p.layers,
                    "stages": p.n_stages,
                    "tables": sum(len(s) for s in p.stages),
                    "max_ops_per_action": p.max_ops,
                    "window_frames": p.window,
                    "header_bits": p.header_bits,
                    "register_bytes": p.register_bytes,
                    "next_hops": p.emit.next_hops,
                }
                for p in self.programs
            ],
        }

    def save(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for p in self.programs:
            path = directory / f"switch{p.switch_id:02d}.json"
            path.write_text(json.dumps(p.to_json(), separators=(",", ":")))
            paths.append(path)
        meta = {
            "entry": {str(k): v for k, v in self.entry.items()},
            "strict_asic": self.strict_asic,
            "input_frag": self.input_frag,
        }
        (directory / "mapping.json").write_text(json.dumps(meta, indent=1))
        return paths

    @classmethod
    def load(cls, directory: Path) -> Mapping:
        meta = json.loads((directory / "mapping.json").read_text())
        progs = [
            SwitchProgram.from_json(json.loads(p.read_text()))
            for p in sorted(directory.glob("switch*.json"))
        ]
        entry = {int(k): list(v) for k, v in meta["entry"].items()}
        return cls(progs, entry, bool(meta["strict_asic"]), int(meta.get("input_frag", 68)))


def as_array(rows: list[list[int]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.int64)
