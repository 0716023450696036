"""The scapy definition of the NetNN header (to build and dissect frames with scapy tools).

The switches use the struct codec in header.py; `encode_scapy` / `decode_scapy` are the
reference a test compares it with.
"""

from __future__ import annotations

import struct

import numpy as np
from scapy.fields import ByteField, IntField, ShortField, StrLenField
from scapy.layers.l2 import Ether
from scapy.packet import Packet, bind_layers

from tidal.innet.header import (
    _DTYPES,
    _FIXED,
    BROADCAST,
    ETHERTYPE,
    VERSION,
    Frame,
    MalformedFrame,
)


class NetNNHeader(Packet):
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


def encode_scapy(f: Frame, src: str = "02:00:00:00:00:01", dst: str = BROADCAST) -> bytes:
    """The same frame built with the scapy classes (the wire format's reference)."""
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


def decode_scapy(raw: bytes) -> Frame:
    """`decode` through the scapy dissector (the reference; tests compare both)."""
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
