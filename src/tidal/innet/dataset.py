"""Labeled packet sets from capture directories, and the train/test split by connection.

Contract:
- In a capture under a covert directory, the covert sender's direction (the direction of each
  TCP/UDP connection carrying the most payload) is covert; the reverse direction (pure ACKs)
  and non-IP frames are RETURN: neither trained on nor scored as covert, reported apart.
  Everything under a benign directory is benign.
- `split()` assigns whole connections (both directions of a 5-tuple, per file) to train or
  test, stratified by label and decided by a hash, so no flow and no connection is on both sides.
- Synthetic flows (scapy) are only ever added on top of real benign data, or used alone when
  the shared captures are missing; `synthetic_benign` says so and every report carries it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tidal.core.errors import TidalError
from tidal.core.shared import shared_path
from tidal.innet.features import (
    N_BYTES,
    FlowKey,
    channel_bytes,
    connection_key,
    flow_key,
    packet_bytes,
    payload_length,
)
from tidal.innet.flowstate import (
    DEFAULT_SLOTS,
    DEFAULT_TIMEOUT_US,
    N_SIDE,
    NO_SLOT,
    FlowTable,
)
from tidal.innet.pcap import CaptureIssue, find_captures, read_capture

COVERT, BENIGN, RETURN = 1, 0, -1
DEFAULT_COVERT = (
    ("nefias", "TCC_SCC_ethernet"),
    ("nefias", "covert_channel_size_modulation_pattern"),
)
DEFAULT_BENIGN = (("nefias", "Legitimate_flow_of_reading_newspaper"), ("benign-zeek",))


@dataclass(frozen=True)
class FlowInfo:
    """One directional flow of one capture file.

    `label` is COVERT for the covert sender's direction (the direction of a covert capture's
    connection that carries the payload), BENIGN for every flow of a benign capture, and
    RETURN for the other directions of a covert capture (the receiver's pure ACKs, non-IP
    frames): those are neither taught nor scored as covert (reported on their own).
    """

    file: str
    key: FlowKey
    label: int
    synthetic: bool
    connection: str  # stable id of (file, connection key)

    @property
    def direction(self) -> str:
        return {COVERT: "covert_sender", BENIGN: "benign", RETURN: "covert_return"}[self.label]


@dataclass
class PacketSet:
    """Per-packet features. Row i belongs to flow `flow[i]` (index into `flows`)."""

    x: np.ndarray  # (N, 68) uint8, channel bytes (features.channel_bytes)
    x_raw: np.ndarray  # (N, 68) uint8, unmasked first 68 bytes
    side: np.ndarray  # (N, N_SIDE) uint8 side features (flowstate.py)
    y: np.ndarray  # (N,) int64 label of the packet's flow (1 covert, 0 benign, -1 return)
    flow: np.ndarray  # (N,) int64
    flows: list[FlowInfo]
    inst: np.ndarray | None = None  # (N,) flow-table instance (-1 untracked)
    ts: np.ndarray | None = None  # (N,) int64 capture timestamp, microseconds
    paylen: np.ndarray | None = None  # (N,) int64 L4 payload length
    frames: list[bytes] | None = None  # the frames, for re-drawing and replay
    x_legacy: np.ndarray | None = None  # (N, 68) the earlier masking (features.packet_bytes)
    issues: list[CaptureIssue] = field(default_factory=list)
    collisions: int = 0

    def __post_init__(self) -> None:
        n = len(self.y)
        if self.side.ndim == 1:  # an IAT column alone (older callers, tests)
            self.side = np.pad(self.side[:, None], ((0, 0), (0, N_SIDE - 1)))
        if self.inst is None:
            self.inst = self.flow.copy()
        if self.x_legacy is None:
            self.x_legacy = self.x
        if self.ts is None:
            self.ts = np.zeros(n, dtype=np.int64)
        if self.paylen is None:
            self.paylen = np.zeros(n, dtype=np.int64)

    @property
    def iat(self) -> np.ndarray:
        return self.side[:, 0]

    @property
    def synthetic_benign(self) -> bool:
        return any(f.synthetic and f.label == BENIGN for f in self.flows)

    @property
    def flow_labels(self) -> np.ndarray:
        return np.array([f.label for f in self.flows], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset_flows(self, flow_ids: np.ndarray) -> PacketSet:
        """The packets of the given flows (flow indices renumbered densely)."""
        keep = np.isin(self.flow, flow_ids)
        old = np.unique(self.flow[keep])
        remap = np.full(len(self.flows), -1, dtype=np.int64)
        remap[old] = np.arange(old.size)
        rows = np.flatnonzero(keep)
        assert self.inst is not None and self.ts is not None and self.paylen is not None
        assert self.x_legacy is not None
        return PacketSet(
            x=self.x[keep],
            x_raw=self.x_raw[keep],
            x_legacy=self.x_legacy[keep],
            side=self.side[keep],
            y=self.y[keep],
            flow=remap[self.flow[keep]],
            flows=[self.flows[i] for i in old],
            inst=self.inst[keep],
            ts=self.ts[keep],
            paylen=self.paylen[keep],
            frames=[self.frames[i] for i in rows] if self.frames is not None else None,
            issues=list(self.issues),
            collisions=self.collisions,
        )


def default_dirs() -> tuple[list[Path], list[Path]]:
    """The shared NeFiAS + Zeek directories (empty lists when the shared data is missing)."""
    cov = [p for parts in DEFAULT_COVERT if (p := shared_path("data", "ids", *parts))]
    ben = [p for parts in DEFAULT_BENIGN if (p := shared_path("data", "ids", *parts))]
    return cov, ben


def _conn_id(file: str, key: FlowKey) -> str:
    proto, a, b, pa, pb = connection_key(key)
    return f"{file}|{proto}|{a.hex()}:{pa}|{b.hex()}:{pb}"


class _Builder:
    def __init__(self, slots: int, timeout_us: int) -> None:
        self.slots, self.timeout_us = slots, timeout_us
        self.x: list[bytes] = []
        self.x_raw: list[bytes] = []
        self.x_legacy: list[bytes] = []
        self.side: list[tuple[int, ...]] = []
        self.inst: list[int] = []
        self.ts: list[int] = []
        self.paylen: list[int] = []
        self.frames: list[bytes] = []
        self.flow: list[int] = []
        self.flows: list[FlowInfo] = []
        self.issues: list[CaptureIssue] = []
        self.n_inst = 0
        self.collisions = 0

    def add_frames(
        self, name: str, frames: list[bytes], ts: list[int], label: int, synthetic: bool
    ) -> None:
        """One capture, replayed through a fresh flow table (as `--frames` replays it)."""
        table = FlowTable(self.slots, self.timeout_us)
        cur: dict[tuple[int, int], int] = {}
        index: dict[FlowKey, int] = {}
        first = len(self.flows)
        payload: dict[int, int] = {}
        for frame, t in zip(frames, ts, strict=True):
            if len(frame) < 14:  # a runt: the entry switch's parser drops it too
                self.issues.append(CaptureIssue(name, -1, f"runt frame of {len(frame)} bytes"))
                continue
            key = flow_key(frame)
            fid = index.get(key)
            if fid is None:
                fid = index[key] = len(self.flows)
                self.flows.append(FlowInfo(name, key, label, synthetic, _conn_id(name, key)))
            plen = payload_length(frame)
            st = table.update(key, t, plen)
            if st.slot == NO_SLOT:
                inst = -1
            else:
                if st.n == 1 or (st.slot, st.gen) not in cur:
                    cur[(st.slot, st.gen)] = self.n_inst
                    self.n_inst += 1
                inst = cur[(st.slot, st.gen)]
            self.side.append(st.side)
            self.inst.append(inst)
            self.ts.append(t)
            self.paylen.append(plen)
            self.x.append(channel_bytes(frame))
            self.x_raw.append(packet_bytes(frame, mask=False))
            self.x_legacy.append(packet_bytes(frame, mask=True))
            self.frames.append(frame)
            self.flow.append(fid)
            payload[fid] = payload.get(fid, 0) + plen
        self.collisions += table.collisions
        if label == COVERT:
            self._label_directions(first, payload)

    def _label_directions(self, first: int, payload: dict[int, int]) -> None:
        """In a covert capture only the payload-carrying direction of a connection is covert."""
        best: dict[str, int] = {}
        for fid in range(first, len(self.flows)):
            f = self.flows[fid]
            if f.key[0] not in (6, 17) or payload.get(fid, 0) == 0:
                continue
            b = best.get(f.connection)
            if b is None or payload[fid] > payload[b]:
                best[f.connection] = fid
        senders = set(best.values())
        for fid in range(first, len(self.flows)):
            if fid not in senders:
                f = self.flows[fid]
                self.flows[fid] = FlowInfo(f.file, f.key, RETURN, f.synthetic, f.connection)

    def build(self) -> PacketSet:
        n = len(self.flow)

        def as_u8(rows: list[bytes]) -> np.ndarray:
            return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(n, N_BYTES).copy()

        flow = np.asarray(self.flow, dtype=np.int64)
        labels = np.array([f.label for f in self.flows], dtype=np.int64)
        return PacketSet(
            x=as_u8(self.x),
            x_raw=as_u8(self.x_raw),
            x_legacy=as_u8(self.x_legacy),
            side=np.asarray(self.side, dtype=np.uint8).reshape(n, N_SIDE),
            y=labels[flow] if n else np.zeros(0, np.int64),
            flow=flow,
            flows=self.flows,
            inst=np.asarray(self.inst, dtype=np.int64),
            ts=np.asarray(self.ts, dtype=np.int64),
            paylen=np.asarray(self.paylen, dtype=np.int64),
            frames=self.frames,
            issues=self.issues,
            collisions=self.collisions,
        )


def load(
    covert: list[Path],
    benign: list[Path],
    synthetic_flows: int = 0,
    seed: int = 0,
    slots: int = DEFAULT_SLOTS,
    timeout_us: int = DEFAULT_TIMEOUT_US,
) -> PacketSet:
    """Read every capture under the directories, label it, and add synthetic benign flows.

    With no readable capture at all (shared data missing) the set is entirely synthetic
    (covert and benign) and every flow says so.
    """
    b = _Builder(slots, timeout_us)
    for label, dirs in ((COVERT, covert), (BENIGN, benign)):
        for d in dirs:
            for path in find_captures(Path(d)):
                cap = read_capture(path)
                b.issues.extend(cap.issues)
                name = _display_name(path)
                b.add_frames(name, cap.frames, cap.ts_us, label, synthetic=False)
    if not b.flow:
        from tidal.innet.synthetic import synthetic_covert

        for name, frames, ts in synthetic_covert(n_flows=8, seed=seed):
            b.add_frames(name, frames, ts, COVERT, synthetic=True)
        synthetic_flows = max(synthetic_flows, 24)
    if synthetic_flows:
        from tidal.innet.synthetic import synthetic_benign

        for name, frames, ts in synthetic_benign(n_flows=synthetic_flows, seed=seed):
            b.add_frames(name, frames, ts, BENIGN, synthetic=True)
    if not b.flow:
        raise TidalError("no packets found in the given capture directories")
    return b.build()


def _display_name(path: Path) -> str:
    parts = path.resolve().parts
    if "ids" in parts:
        return "/".join(parts[parts.index("ids") + 1 :])
    return str(path)


def _rank(conn: str, salt: str) -> int:
    return int.from_bytes(hashlib.sha1(f"{salt}|{conn}".encode()).digest()[:8], "big")


def split(
    ps: PacketSet, test_fraction: float = 0.3, salt: str = "tidal-innet"
) -> dict[str, np.ndarray]:
    """Flow indices of 'train' and 'test': whole connections, stratified by label and folder.

    Connections are grouped by (label, folder of the capture, and for covert captures the
    technique = file-name prefix such as SCC / TCC / Size): one group per covert technique and
    per benign protocol folder. Within a group they are ordered by a salted hash and
    the first round(test_fraction * n) form the test side. A group with one connection (e.g. the
    single size-modulation capture) stays in training, so every group seen in test was seen in
    training; cross-technique generalization is measured separately (docs/innet.md).
    """
    if not 0.0 < test_fraction < 1.0:
        raise TidalError(f"test_fraction must be in (0, 1), got {test_fraction}")
    groups: dict[tuple[int, str], set[str]] = {}
    for f in ps.flows:
        folder, _, base = f.file.rpartition("/")
        lab = BENIGN if f.label == BENIGN else COVERT  # both directions of a connection
        if lab == COVERT:  # technique = file-name prefix (SCC, TCC, Size)
            folder += "/" + base.split("_", 1)[0]
        groups.setdefault((lab, folder), set()).add(f.connection)
    test_conns: set[str] = set()
    for _group, conns in sorted(groups.items()):
        ordered = sorted(conns, key=lambda c: (_rank(c, salt), c))
        k = int(round(test_fraction * len(ordered)))
        test_conns.update(ordered[:k])
    is_test = np.array([f.connection in test_conns for f in ps.flows], dtype=bool)
    ids = np.arange(len(ps.flows))
    return {"train": ids[~is_test], "test": ids[is_test]}


def rebuild(ps: PacketSet, fn: Callable[[list[bytes], list[int]], list[bytes]]) -> PacketSet:
    """A packet set re-extracted from `fn(frames, ts)` of each capture's packets in `ps`
    (each capture through a fresh flow table, as `load` does). Used to re-draw fingerprints."""
    if ps.frames is None or ps.ts is None:
        raise TidalError("this packet set keeps no frames to re-extract from")
    b = _Builder(DEFAULT_SLOTS, DEFAULT_TIMEOUT_US)
    by_file: dict[str, list[int]] = {}
    for i, fid in enumerate(ps.flow.tolist()):
        by_file.setdefault(ps.flows[fid].file, []).append(i)
    for name, rows in by_file.items():
        fl = {ps.flows[ps.flow[i]] for i in rows}
        label = BENIGN if all(f.label == BENIGN for f in fl) else COVERT
        synthetic = any(f.synthetic for f in fl)
        frames = [ps.frames[i] for i in rows]
        ts = [int(ps.ts[i]) for i in rows]
        b.add_frames(name, fn(frames, ts), ts, label, synthetic)
    b.issues = list(ps.issues)
    return b.build()


def first_packets(ps: PacketSet, n: int) -> PacketSet:
    """The first `n` packets of every capture in `ps`, re-extracted (what `--frames n` replays)."""
    seen: dict[str, int] = {}
    keep = np.zeros(len(ps), dtype=bool)
    for i, fid in enumerate(ps.flow.tolist()):
        f = ps.flows[fid].file
        c = seen.get(f, 0)
        if c < n:
            keep[i] = True
            seen[f] = c + 1
    sub = ps.subset_flows(np.unique(ps.flow[keep]))
    rows = np.flatnonzero(keep[np.isin(ps.flow, np.unique(ps.flow[keep]))])
    return rebuild(rows_of(sub, rows), lambda fr, _ts: fr)


def rows_of(ps: PacketSet, rows: np.ndarray) -> PacketSet:
    """The given rows of `ps` (flows unchanged)."""
    assert ps.inst is not None and ps.ts is not None and ps.paylen is not None
    return PacketSet(
        x=ps.x[rows], x_raw=ps.x_raw[rows],
        x_legacy=ps.x_legacy[rows] if ps.x_legacy is not None else None,
        side=ps.side[rows], y=ps.y[rows],
        flow=ps.flow[rows], flows=ps.flows, inst=ps.inst[rows], ts=ps.ts[rows],
        paylen=ps.paylen[rows],
        frames=[ps.frames[i] for i in rows] if ps.frames is not None else None,
        issues=list(ps.issues), collisions=ps.collisions,
    )  # fmt: skip
