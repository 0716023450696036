"""Match-action switch emulator: parse, window registers, staged tables, emit.

Contract:
- `Switch.receive(raw)` takes one Ethernet frame and returns the frames it emits (possibly
  none). Malformed frames (foreign ethertype, bad header, unknown stream/replica, vector out of
  range) are dropped and counted in `counters`, never raised.
- `Switch.receive_batch(batch)` is the same pipeline for many samples' frames of one
  (stream, replica, fragment) at once (vectorized over samples; used for whole test sets).
- Registers hold the partial input vector of each in-flight sample (slot = index mod slots),
  summing partial sums or placing slices; the tables run only when the sample's window (every
  expected frame) is complete, then the result is emitted in fragments.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from tidal.innet.header import Frame, MalformedFrame, decode, encode
from tidal.innet.program import Accept, SwitchProgram, Table


@dataclass
class FrameBatch:
    """Frames of one (stream, replica, fragment) for several samples."""

    stream: int
    replica: int
    fragment: int
    nfrag: int
    width: int
    offset: int
    index: np.ndarray  # (B,)
    vector: np.ndarray  # (B, n)

    def frames(self) -> list[Frame]:
        return [
            Frame(
                self.stream,
                int(i),
                self.replica,
                self.fragment,
                self.nfrag,
                self.width,
                self.offset,
                self.vector[k],
            )
            for k, i in enumerate(self.index)
        ]

    @classmethod
    def of(cls, f: Frame) -> FrameBatch:
        return cls(
            f.stream,
            f.replica,
            f.fragment,
            f.nfrag,
            f.width,
            f.offset,
            np.array([f.index], dtype=np.int64),
            f.vector[None, :],
        )


_LIMITS = {1: (0, 255), 2: (-(2**15), 2**15 - 1), 4: (-(2**31), 2**31 - 1)}


def run_tables(
    stages: list[list[Table]], fields: dict[str, int], x: np.ndarray, luts: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Execute the staged tables on the input vectors x (B, n); returns the PHV."""
    b = x.shape[0]
    phv = {name: np.zeros((b, n), dtype=np.int64) for name, n in fields.items()}
    phv["in"] = x
    for stage in stages:
        for t in stage:
            dst = phv[t.dst]
            if t.kind == "lut":
                key = phv[t.src][:, t.key] - t.lo
                tab = luts[t.name]
                hit = (key >= 0) & (key < tab.shape[0])
                rows = tab[np.where(hit, key, 0)] * hit[:, None]
                dst[:, t.dst_idx] += rows
            elif t.kind == "mac":
                dst[:, t.dst_idx] += phv[t.src][:, t.key][:, None] * np.asarray(t.weights)
            elif t.kind == "add":
                dst[:, t.dst_idx] += phv[t.src][:, t.src_idx]
            elif t.kind == "requant":
                v = phv[t.src][:, t.src_idx] + np.asarray(t.bias, dtype=np.int64)
                if t.shift > 0:
                    v = (v + (1 << (t.shift - 1))) >> t.shift
                dst[:, t.dst_idx] = np.clip(v, 0, 127)
            elif t.kind == "sign":
                v = phv[t.src][:, t.src_idx] + np.asarray(t.bias, dtype=np.int64)
                dst[:, t.dst_idx] = (v >= 0).astype(np.int64)
            elif t.kind == "bias":
                dst[:, t.dst_idx] = phv[t.src][:, t.src_idx] + np.asarray(t.bias, dtype=np.int64)
            elif t.kind == "max":
                src = phv[t.src]
                dst[:, t.dst_idx] = np.maximum(src[:, t.src_idx], src[:, t.src2_idx])
            elif t.kind == "verdict":
                src = phv[t.src]
                dst[:, 0] = (src[:, t.src_idx[1]] > src[:, t.src_idx[0]]).astype(np.int64)
            else:
                raise ValueError(f"unknown table kind {t.kind!r}")
    return phv


class Switch:
    """One emulated switch running one `SwitchProgram`."""

    def __init__(self, prog: SwitchProgram) -> None:
        self.prog = prog
        self.accepts: dict[tuple[int, int], Accept] = {
            (a.stream, a.replica): a for a in prog.accepts
        }
        self.reg = np.zeros((prog.slots, prog.input_size), dtype=np.int64)
        self.count = np.zeros(prog.slots, dtype=np.int64)
        self.owner = np.full(prog.slots, -1, dtype=np.int64)
        self.counters: Counter[str] = Counter()
        self.luts = {
            t.name: np.asarray(t.entries, dtype=np.int64)
            for st in prog.stages
            for t in st
            if t.kind == "lut"
        }

    def receive(self, raw: bytes) -> list[bytes]:
        """Process one raw frame; returns the raw frames to send (to every next hop)."""
        self.counters["frames"] += 1
        try:
            f = decode(raw)
        except MalformedFrame as e:
            self.counters["malformed"] += 1
            self.counters[f"malformed: {str(e).split(' ')[0]}"] += 1
            return []
        out = self.receive_batch(FrameBatch.of(f))
        return [encode(fr) for ob in out for fr in ob.frames()]

    def _validate(self, fb: FrameBatch) -> Accept | None:
        a = self.accepts.get((fb.stream, fb.replica))
        n = fb.vector.shape[1]
        if a is None or fb.width != a.width or fb.nfrag != a.frags:
            return None
        if fb.offset < 0 or fb.offset + n > a.length or fb.fragment >= a.frags:
            return None
        lo, hi = _LIMITS[a.width]
        if fb.vector.size and (fb.vector.min() < lo or fb.vector.max() > hi):
            return None
        return a

    def _window(
        self, a: Accept, fb: FrameBatch, index: np.ndarray, slot: np.ndarray, vec: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Register update for samples with distinct slots; returns the completed ones."""
        stale = self.owner[slot] != index
        if stale.any():
            s = slot[stale]
            self.counters["evicted"] += int((self.count[s] > 0).sum())
            self.reg[s] = 0
            self.count[s] = 0
            self.owner[s] = index[stale]
        cols = a.offset + fb.offset + np.arange(vec.shape[1])
        if a.mode == "sum":
            self.reg[slot[:, None], cols[None, :]] += vec
        else:
            self.reg[slot[:, None], cols[None, :]] = vec
        self.count[slot] += 1
        done = self.count[slot] >= self.prog.window
        if not done.any():
            return None
        ds = slot[done]
        x = self.reg[ds].copy()
        self.count[ds] = 0
        self.owner[ds] = -1
        self.reg[ds] = 0
        return index[done], x

    def receive_batch(self, fb: FrameBatch) -> list[FrameBatch]:
        """Window accumulation and, for complete samples, the pipeline and the emit."""
        a = self._validate(fb)
        if a is None:
            self.counters["malformed"] += len(fb.index)
            self.counters["malformed: unexpected stream/replica/shape"] += len(fb.index)
            return []
        p = self.prog
        slot = fb.index % p.slots
        if np.unique(slot).size != slot.size:
            raise ValueError("a batch must not hold two samples of the same register slot")
        r = self._window(a, fb, fb.index, slot, fb.vector)
        if r is None:
            return []
        idx, x = r
        phv = run_tables(p.stages, p.fields, x, self.luts)
        out = phv[p.emit.field]
        self.counters["emitted_samples"] += len(idx)
        e = p.emit
        nfrag = -(-e.length // e.frag_elems)
        return [
            FrameBatch(
                e.stream,
                e.replica,
                k,
                nfrag,
                e.width,
                k * e.frag_elems,
                idx,
                out[:, k * e.frag_elems : (k + 1) * e.frag_elems],
            )
            for k in range(nfrag)
        ]
