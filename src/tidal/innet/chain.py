"""The whole in-network pipeline on real frames: entry switch -> model switches -> exit switch.

Contract: `Chain(mapping, k, slots, timeout_us)` wires an `extract.Extractor` in front of the
mapping's switches and an `extract.Decider` behind its last one. `ids()` gives the switch ids
(model switches keep theirs; the extractor and decider come after). `run_frames(frames, ts)`
replays captured frames in order (each wrapped in the replay shim) through the in-process
chain, frame by frame with encoded Ethernet frames, and returns a `ChainResult`.
`expected(...)` is what the vectorised path (dataset features + `Fabric.run_batch` +
`flowstate.flow_decisions`) says for the same packets; `agreement(...)` compares both.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from tidal.innet.extract import (
    STREAM_DECISION,
    STREAM_FLOW,
    Decider,
    Extractor,
    extractor_resources,
    wrap,
)
from tidal.innet.fabric import side_width
from tidal.innet.header import decode
from tidal.innet.program import HOST, STREAM_BYTES, STREAM_IAT, Mapping
from tidal.innet.switch import Switch


@dataclass
class ChainResult:
    """Per packet: verdict, logits (N, 2), decision made (0/1/2), slot+1, gen, n; plus the
    channel bytes and side features the entry switch emitted."""

    verdict: np.ndarray
    logits: np.ndarray
    decision: np.ndarray
    flow: np.ndarray  # (N, 3): slot + 1, generation, packet number
    x: np.ndarray
    side: np.ndarray
    counters: dict[int, dict[str, int]]


class Chain:
    """Entry switch + mapping + exit switch (module contract)."""

    def __init__(
        self,
        mapping: Mapping,
        k: int,
        slots: int,
        timeout_us: int,
        window: int = 64,
        need: int | None = None,
    ) -> None:
        self.mapping = copy.deepcopy(mapping)
        n = len(self.mapping.programs)
        self.extractor_id, self.decider_id = n, n + 1
        for p in self.mapping.programs:
            if HOST in p.emit.next_hops:
                p.emit.next_hops = [self.decider_id if h == HOST else h for h in p.emit.next_hops]
        self.k, self.slots, self.timeout_us, self.need = k, slots, timeout_us, need
        self.window = window
        # the entry switch also mirrors its extracted features to the host (a mirror
        # session), so replay can check them; the model switches never see those copies
        self.routes = {
            STREAM_BYTES: [*self.mapping.entry.get(STREAM_BYTES, []), HOST],
            STREAM_IAT: [*self.mapping.entry.get(STREAM_IAT, []), HOST],
            STREAM_FLOW: [self.decider_id],
        }
        self.side_width = side_width(self.mapping)

    def make_extractor(self) -> Extractor:
        return Extractor(
            self.routes, self.mapping.input_frag, self.slots, self.timeout_us, self.side_width
        )

    def make_decider(self) -> Decider:
        return Decider(self.k, self.window, self.slots, self.need)

    def spec(self, sw: int) -> dict[str, Any]:
        """What `switchd` needs to run switch `sw` (JSON-able)."""
        if sw == self.extractor_id:
            return {
                "kind": "extractor",
                "routes": {str(s): h for s, h in self.routes.items()},
                "input_frag": self.mapping.input_frag,
                "slots": self.slots,
                "timeout_us": self.timeout_us,
                "side_width": self.side_width,
            }
        if sw == self.decider_id:
            return {
                "kind": "decider", "k": self.k, "window": self.window, "slots": self.slots,
                "need": self.need,
            }  # fmt: skip
        prog = next(p for p in self.mapping.programs if p.switch_id == sw)
        return {"kind": "model", "program": prog.to_json()}

    def ids(self) -> list[int]:
        return [p.switch_id for p in self.mapping.programs] + [self.extractor_id, self.decider_id]

    def edges(self) -> list[tuple[int, int]]:
        """Switch-to-switch links (undirected pairs, each once)."""
        out: set[tuple[int, int]] = set()
        for p in self.mapping.programs:
            out.update((min(p.switch_id, h), max(p.switch_id, h)) for h in p.emit.next_hops)
        for hops in self.routes.values():
            e = self.extractor_id
            out.update((min(e, h), max(e, h)) for h in hops if h != HOST)
        return sorted(out)

    def resources(self) -> dict[str, Any]:
        """Stage / register / header figures of the entry and exit switches."""
        ext = extractor_resources(self.slots)
        dec = {
            "stages": 4,
            "register_bytes": (2 * self.slots + 1) * 4 + self.window * 16,
            "header_bits_out": 112 + 7 * 32,
        }
        return {"entry_switch": ext, "exit_switch": dec}

    def run_frames(self, frames: list[bytes], ts: list[int]) -> ChainResult:
        """Replay frames (in order) through the in-process chain, frame by frame."""
        n = len(frames)
        ext, dec = self.make_extractor(), self.make_decider()
        sws = {p.switch_id: Switch(p) for p in self.mapping.programs}
        out = np.full((n, 7), -1, dtype=np.int64)
        xs = np.zeros((n, 68), dtype=np.int64)
        sides = np.zeros((n, self.side_width), dtype=np.int64)
        for i, (fr, t) in enumerate(zip(frames, ts, strict=True)):
            q: deque[tuple[int, bytes]] = deque(ext.receive(wrap(fr, t)))
            while q:
                hop, raw = q.popleft()
                if hop == HOST:
                    f = decode(raw)
                    if f.stream == STREAM_DECISION:
                        out[i] = f.vector
                    elif f.stream == STREAM_BYTES:  # mirror copy of the extracted bytes
                        xs[i, f.offset : f.offset + len(f.vector)] = f.vector
                    elif f.stream == STREAM_IAT:
                        sides[i] = f.vector
                    continue
                if hop == self.decider_id:
                    q.extend(dec.receive(raw))
                    continue
                sw = sws[hop]
                for o in sw.receive(raw):
                    q.extend((h, o) for h in sw.prog.emit.next_hops)
        counters = {s: dict(v.counters) for s, v in sws.items()}
        counters[self.extractor_id] = dict(ext.counters)
        counters[self.decider_id] = dict(dec.counters)
        return ChainResult(out[:, 0], out[:, 1:3], out[:, 3], out[:, 4:7], xs, sides, counters)


def flows_from_decisions(decision: np.ndarray, flow: np.ndarray, n_flows: int) -> np.ndarray:
    """Per-flow verdict of the exit switch: covert if any of its packets' decisions was 1."""
    v = np.zeros(n_flows, dtype=np.int64)
    np.maximum.at(v, flow, (decision == 1).astype(np.int64))
    return v
