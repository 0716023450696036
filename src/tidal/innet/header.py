"""The custom Ethernet header switches use to pass intermediate results (a scapy Packet class).

Wire format after the Ethernet header (ethertype 0x88B5, IEEE local experimental 1):
version (8) | stream (8) | index (32) | replica (8) | frag (8) | nfrag (8) | width (8) |
offset (16) | count (16) | vector (count x width bytes, big-endian; width 1 = unsigned byte,
2 and 4 = signed). `stream` names the producer (0 = packet bytes, 1 = inter-arrival time,
255 = verdict, others = a layer's output), `index` the sample, `replica` the parallel switch
that produced it, `offset` where the fragment starts in the producer's vector.

Contract: `decode(raw)` returns a `Frame` or raises `MalformedFrame` (never anything else).
The codec is struct-based (switch processes do not import scapy); `header_scapy.py` holds the
scapy definition of the same header, and a test checks both give the same bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

ETHERTYPE = 0x88B5
VERSION = 1
_FIXED = struct.Struct(">BBIBBBBHH")
_DTYPES: dict[int, np.dtype[Any]] = {1: np.dtype(">u1"), 2: np.dtype(">i2"), 4: np.dtype(">i4")}
BROADCAST = "ff:ff:ff:ff:ff:ff"


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


_ETH = bytes.fromhex("ffffffffffff020000000001") + ETHERTYPE.to_bytes(2, "big")


def encode(f: Frame, src: str = "02:00:00:00:00:01", dst: str = BROADCAST) -> bytes:
    """Ethernet frame bytes carrying `f` (struct-packed; equal to `encode_scapy`, tested)."""
    if f.width not in _DTYPES:
        raise MalformedFrame(f"width {f.width} not in (1, 2, 4)")
    payload = np.asarray(f.vector).astype(_DTYPES[f.width]).tobytes()
    if src == "02:00:00:00:00:01" and dst == BROADCAST:
        eth = _ETH
    else:
        eth = bytes.fromhex(dst.replace(":", "") + src.replace(":", "")) + _ETH[12:]
    fixed = _FIXED.pack(
        VERSION, f.stream, f.index, f.replica, f.fragment, f.nfrag, f.width, f.offset,
        len(f.vector),
    )  # fmt: skip
    return eth + fixed + payload


def decode(raw: bytes) -> Frame:
    """Parse an Ethernet frame into a `Frame`; MalformedFrame on anything unexpected."""
    if len(raw) < 14 + _FIXED.size:
        raise MalformedFrame(f"frame of {len(raw)} bytes is shorter than the header")
    etype = struct.unpack_from(">H", raw, 12)[0]
    if etype != ETHERTYPE:
        raise MalformedFrame(f"ethertype 0x{etype:04x} is not 0x{ETHERTYPE:04x}")
    version, stream, index, replica, frag, nfrag, width, offset, count = _FIXED.unpack_from(raw, 14)
    if version != VERSION:
        raise MalformedFrame(f"version {version} != {VERSION}")
    if width not in _DTYPES:
        raise MalformedFrame(f"width {width} not in (1, 2, 4)")
    start = 14 + _FIXED.size
    vec = raw[start : start + count * width]
    if len(vec) != count * width:
        raise MalformedFrame(f"vector has {len(vec)} bytes, header says {count * width}")
    if frag >= nfrag:
        raise MalformedFrame(f"fragment {frag} >= nfrag {nfrag}")
    arr = np.frombuffer(vec, dtype=_DTYPES[width]).astype(np.int64)
    return Frame(stream, index, replica, frag, nfrag, width, offset, arr)
