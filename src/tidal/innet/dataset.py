"""Labeled packet sets from capture directories, and the train/test split by connection.

Contract:
- Every capture under a covert directory is covert (all of its flows, including the reverse
  pure-ACK direction of the covert TCP connection: it is its own directional flow, labeled
  covert because its timing mirrors the channel); everything under a benign directory is benign.
- `split()` assigns whole connections (both directions of a 5-tuple, per file) to train or
  test, stratified by label and decided by a hash, so no flow and no connection is on both sides.
- Synthetic flows (scapy) are only ever added on top of real benign data, or used alone when
  the shared captures are missing; `synthetic_benign` says so and every report carries it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tidal.core.errors import TidalError
from tidal.core.shared import shared_path
from tidal.innet.features import (
    N_BYTES,
    FlowKey,
    connection_key,
    flow_key,
    packet_bytes,
    quantize_iat,
)
from tidal.innet.pcap import CaptureIssue, find_captures, read_capture

COVERT, BENIGN = 1, 0
DEFAULT_COVERT = (
    ("nefias", "TCC_SCC_ethernet"),
    ("nefias", "covert_channel_size_modulation_pattern"),
)
DEFAULT_BENIGN = (("nefias", "Legitimate_flow_of_reading_newspaper"), ("benign-zeek",))


@dataclass(frozen=True)
class FlowInfo:
    """One directional flow of one capture file."""

    file: str
    key: FlowKey
    label: int
    synthetic: bool
    connection: str  # stable id of (file, connection key)


@dataclass
class PacketSet:
    """Per-packet features. Row i belongs to flow `flow[i]` (index into `flows`)."""

    x: np.ndarray  # (N, 68) uint8, masked bytes
    x_raw: np.ndarray  # (N, 68) uint8, unmasked bytes
    iat: np.ndarray  # (N,) uint8, log-quantized inter-arrival time within the flow
    y: np.ndarray  # (N,) int64 label (1 = covert)
    flow: np.ndarray  # (N,) int64
    flows: list[FlowInfo]
    issues: list[CaptureIssue] = field(default_factory=list)

    @property
    def synthetic_benign(self) -> bool:
        return any(f.synthetic and f.label == BENIGN for f in self.flows)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset_flows(self, flow_ids: np.ndarray) -> PacketSet:
        """The packets of the given flows (flow indices renumbered densely)."""
        keep = np.isin(self.flow, flow_ids)
        old = np.unique(self.flow[keep])
        remap = np.full(len(self.flows), -1, dtype=np.int64)
        remap[old] = np.arange(old.size)
        return PacketSet(
            x=self.x[keep],
            x_raw=self.x_raw[keep],
            iat=self.iat[keep],
            y=self.y[keep],
            flow=remap[self.flow[keep]],
            flows=[self.flows[i] for i in old],
            issues=list(self.issues),
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
    def __init__(self) -> None:
        self.x: list[bytes] = []
        self.x_raw: list[bytes] = []
        self.iat: list[int] = []
        self.y: list[int] = []
        self.flow: list[int] = []
        self.flows: list[FlowInfo] = []
        self.index: dict[tuple[str, FlowKey], int] = {}
        self.issues: list[CaptureIssue] = []

    def add_frames(
        self, name: str, frames: list[bytes], ts: list[int], label: int, synthetic: bool
    ) -> None:
        last: dict[int, int] = {}
        for frame, t in zip(frames, ts, strict=True):
            key = flow_key(frame)
            fid = self.index.get((name, key))
            if fid is None:
                fid = len(self.flows)
                self.index[(name, key)] = fid
                self.flows.append(FlowInfo(name, key, label, synthetic, _conn_id(name, key)))
            prev = last.get(fid)
            self.iat.append(0 if prev is None else quantize_iat(t - prev))
            last[fid] = t
            self.x.append(packet_bytes(frame, mask=True))
            self.x_raw.append(packet_bytes(frame, mask=False))
            self.y.append(label)
            self.flow.append(fid)

    def build(self) -> PacketSet:
        n = len(self.y)

        def as_u8(rows: list[bytes]) -> np.ndarray:
            return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(n, N_BYTES).copy()

        return PacketSet(
            x=as_u8(self.x),
            x_raw=as_u8(self.x_raw),
            iat=np.asarray(self.iat, dtype=np.uint8),
            y=np.asarray(self.y, dtype=np.int64),
            flow=np.asarray(self.flow, dtype=np.int64),
            flows=self.flows,
            issues=self.issues,
        )


def load(
    covert: list[Path], benign: list[Path], synthetic_flows: int = 0, seed: int = 0
) -> PacketSet:
    """Read every capture under the directories, label it, and add synthetic benign flows.

    With no readable capture at all (shared data missing) the set is entirely synthetic
    (covert and benign) and every flow says so.
    """
    b = _Builder()
    for label, dirs in ((COVERT, covert), (BENIGN, benign)):
        for d in dirs:
            for path in find_captures(Path(d)):
                cap = read_capture(path)
                b.issues.extend(cap.issues)
                name = _display_name(path)
                b.add_frames(name, cap.frames, cap.ts_us, label, synthetic=False)
    if not b.y:
        from tidal.innet.synthetic import synthetic_covert

        for name, frames, ts in synthetic_covert(n_flows=8, seed=seed):
            b.add_frames(name, frames, ts, COVERT, synthetic=True)
        synthetic_flows = max(synthetic_flows, 24)
    if synthetic_flows:
        from tidal.innet.synthetic import synthetic_benign

        for name, frames, ts in synthetic_benign(n_flows=synthetic_flows, seed=seed):
            b.add_frames(name, frames, ts, BENIGN, synthetic=True)
    if not b.y:
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
        if f.label == COVERT:  # technique = file-name prefix (SCC, TCC, Size)
            folder += "/" + base.split("_", 1)[0]
        groups.setdefault((f.label, folder), set()).add(f.connection)
    test_conns: set[str] = set()
    for _group, conns in sorted(groups.items()):
        ordered = sorted(conns, key=lambda c: (_rank(c, salt), c))
        k = int(round(test_fraction * len(ordered)))
        test_conns.update(ordered[:k])
    is_test = np.array([f.connection in test_conns for f in ps.flows], dtype=bool)
    ids = np.arange(len(ps.flows))
    return {"train": ids[~is_test], "test": ids[is_test]}
