"""The custom Ethernet header switches use to pass intermediate results (a scapy Packet class).

Wire format after the Ethernet header (ethertype 0x88B5, IEEE local experimental 1):
version (8) | stream (8) | index (32) | replica (8) | frag (8) | nfrag (8) | width (8) |
offset (16) | count (16) | vector (count x width bytes, big-endian; width 1 = unsigned byte,
2 and 4 = signed). `stream` names the producer (0 = packet bytes, 1 = inter-arrival time,
255 = verdict, others = a layer's output), `index` the sample, `replica` the parallel switch
that produced it, `offset` where the fragment starts in the producer's vector.

Contract: `decode(raw)` returns a `Frame` or raises `MalformedFrame` (never anything else).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from scapy.fields import ByteField, IntField, ShortField, StrLenField
from scapy.layers.l2 import Ether
from scapy.packet import Packet, bind_layers

ETHERTYPE = 0x88B5
VERSION = 1
_FIXED = struct.Struct(">BBIBBBBHH")
_DTYPES: dict[int, np.dtype[Any]] = {1: np.dtype(">u1"), 2: np.dtype(">i2"), 4: np.dtype(">i4")}
BROADCAST = "ff:ff:ff:ff:ff:ff"


class NetNNHeader(Packet):  # type: ignore[misc]
    """Scapy definition of the header (used to build and dissect frames)."""

    name = "NetNN"
    fields_desc = [
        ByteField("version", VERSION),
        ByteField("stream", 0),
        IntField("index", 0),
        ByteField("replica", 0),
        ByteField("frag", 0),
        ByteField("nfrag", 1),
        ByteField("width", 1),
        ShortField("offset", 0),
        ShortField("count", 0),
        StrLenField("vector", b"", length_from=lambda p: p.count * p.width),
    ]


bind_layers(Ether, NetNNHeader, type=ETHERTYPE)


class MalformedFrame(ValueError):
    """A frame the parser rejects; the message says why."""


@dataclass
class Frame:
    """One decoded frame (a fragment of one producer's vector for one sample)."""

    stream: int
    index: int
    replica: int
    fragment: int
    nfrag: int
    width: int
    offset: int
    vector: np.ndarray  # int64


def encode(f: Frame, src: str = "02:00:00:00:00:01", dst: str = BROADCAST) -> bytes:
    """Ethernet frame bytes carrying `f` (built with the scapy classes)."""
    if f.width not in _DTYPES:
        raise MalformedFrame(f"width {f.width} not in (1, 2, 4)")
    payload = np.asarray(f.vector).astype(_DTYPES[f.width]).tobytes()
    pkt = Ether(src=src, dst=dst, type=ETHERTYPE) / NetNNHeader(
        stream=f.stream,
        index=f.index,
        replica=f.replica,
        frag=f.fragment,
        nfrag=f.nfrag,
        width=f.width,
        offset=f.offset,
        count=len(f.vector),
        vector=payload,
    )
    return bytes(pkt)


def decode(raw: bytes) -> Frame:
    """Parse an Ethernet frame into a `Frame`; MalformedFrame on anything unexpected."""
    if len(raw) < 14 + _FIXED.size:
        raise MalformedFrame(f"frame of {len(raw)} bytes is shorter than the header")
    etype = struct.unpack_from(">H", raw, 12)[0]
    if etype != ETHERTYPE:
        raise MalformedFrame(f"ethertype 0x{etype:04x} is not 0x{ETHERTYPE:04x}")
    pkt = Ether(raw)
    if NetNNHeader not in pkt:
        raise MalformedFrame("no NetNN header")
    h = pkt[NetNNHeader]
    if h.version != VERSION:
        raise MalformedFrame(f"version {h.version} != {VERSION}")
    if h.width not in _DTYPES:
        raise MalformedFrame(f"width {h.width} not in (1, 2, 4)")
    vec = bytes(h.vector)
    if len(vec) != h.count * h.width:
        raise MalformedFrame(f"vector has {len(vec)} bytes, header says {h.count * h.width}")
    if h.frag >= h.nfrag:
        raise MalformedFrame(f"fragment {h.frag} >= nfrag {h.nfrag}")
    arr = np.frombuffer(vec, dtype=_DTYPES[h.width]).astype(np.int64)
    return Frame(h.stream, h.index, h.replica, h.frag, h.nfrag, h.width, h.offset, arr)
