"""The in-process transport: switches wired as the mapping says, deterministic, FIFO.

Contract: `Fabric.run_batch(x, iat)` pushes every sample through the emulated switches in
vectorized batches (at most `min(slots)` samples in flight, so no register slot is reused
before its window completed) and returns the verdicts and logits the last switch
emitted. `Fabric.run_frames`
does the same one sample at a time with real encoded Ethernet frames (the same bytes the
namespace transport puts on veth links). Both raise RuntimeError if a sample gets no verdict.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from tidal.innet.header import Frame, decode, encode
from tidal.innet.intref import side2d
from tidal.innet.program import HOST, STREAM_BYTES, STREAM_IAT, Mapping
from tidal.innet.switch import FrameBatch, Switch


def input_frames(index: int, x: np.ndarray, iat: object, frag: int = 68) -> list[Frame]:
    """The feeder's frames for one packet: its 68 bytes (in fragments of `frag`) and its side
    features (an int: the inter-arrival time alone)."""
    xs = np.asarray(x, dtype=np.int64)
    nfrag = -(-len(xs) // frag)
    out = [
        Frame(STREAM_BYTES, index, 0, k, nfrag, 1, k * frag, xs[k * frag : (k + 1) * frag])
        for k in range(nfrag)
    ]
    out.append(Frame(STREAM_IAT, index, 0, 0, 1, 1, 0, np.atleast_1d(np.asarray(iat, np.int64))))
    return out


def side_width(mapping: Mapping) -> int:
    """Elements of the side-feature stream (stream 1) the mapping's switches accept."""
    return max(
        (a.length for p in mapping.programs for a in p.accepts if a.stream == STREAM_IAT),
        default=1,
    )


class Fabric:
    """All switches of a mapping in one process."""

    def __init__(self, mapping: Mapping) -> None:
        self.mapping = mapping
        self.switches = {p.switch_id: Switch(p) for p in mapping.programs}
        self.hops = {p.switch_id: p.emit.next_hops for p in mapping.programs}
        self.frames_sent = 0

    def run_batch(self, x: np.ndarray, iat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(verdicts (N,), logits (N, 2)) for every sample, computed by the switches."""
        n = len(x)
        verdict = np.full(n, -1, dtype=np.int64)
        logits = np.zeros((n, 2), dtype=np.int64)
        chunk = min(s.prog.slots for s in self.switches.values())
        for start in range(0, n, chunk):
            idx = np.arange(start, min(n, start + chunk), dtype=np.int64)
            q: deque[tuple[int, FrameBatch]] = deque()
            fr = self.mapping.input_frag
            nfrag = -(-x.shape[1] // fr)
            feeds = [
                FrameBatch(
                    STREAM_BYTES,
                    0,
                    k,
                    nfrag,
                    1,
                    k * fr,
                    idx,
                    x[idx, k * fr : (k + 1) * fr].astype(np.int64),
                )
                for k in range(nfrag)
            ]
            side = self.side_width()
            feeds.append(
                FrameBatch(
                    STREAM_IAT,
                    0,
                    0,
                    1,
                    1,
                    0,
                    idx,
                    side2d(iat[idx], side) if side else iat[idx, None],
                )
            )
            for fb in feeds:
                for sw in self.mapping.entry.get(fb.stream, []):
                    q.append((sw, fb))
            while q:
                sw, fb = q.popleft()
                self.frames_sent += len(fb.index)
                for out in self.switches[sw].receive_batch(fb):
                    for hop in self.hops[sw]:
                        if hop == HOST:
                            verdict[out.index] = out.vector[:, 0]
                            logits[out.index] = out.vector[:, 1:3]
                        else:
                            q.append((hop, out))
        if (verdict < 0).any():
            raise RuntimeError(f"{int((verdict < 0).sum())} samples got no verdict")
        return verdict, logits

    def run_frames(self, x: np.ndarray, iat: np.ndarray, first_index: int = 0) -> np.ndarray:
        """Verdicts computed frame by frame with encoded Ethernet frames."""
        out = np.full(len(x), -1, dtype=np.int64)
        for k in range(len(x)):
            q: deque[tuple[int, bytes]] = deque()
            frames = input_frames(
                first_index + k,
                x[k],
                side2d(iat[k : k + 1], self.side_width())[0],
                self.mapping.input_frag,
            )
            for f in frames:
                raw = encode(f)
                for sw in self.mapping.entry.get(f.stream, []):
                    q.append((sw, raw))
            while q:
                sw, raw = q.popleft()
                self.frames_sent += 1
                for o in self.switches[sw].receive(raw):
                    for hop in self.hops[sw]:
                        if hop == HOST:
                            f = decode(o)
                            out[f.index - first_index] = f.vector[0]
                        else:
                            q.append((hop, o))
        if (out < 0).any():
            raise RuntimeError(f"{int((out < 0).sum())} samples got no verdict")
        return out

    def side_width(self) -> int:
        """Elements of the side-feature stream the switches expect."""
        return side_width(self.mapping)

    def hop_count(self) -> int:
        """Switches on the longest path from the feeder to the collector."""
        depth: dict[int, int] = {}

        def d(sw: int) -> int:
            if sw not in depth:
                depth[sw] = 1 + max((d(h) for h in self.hops[sw] if h != HOST), default=0)
            return depth[sw]

        starts = {s for v in self.mapping.entry.values() for s in v}
        return max(d(s) for s in starts)
