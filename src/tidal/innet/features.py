"""Per-packet features: the first 68 bytes, a log-quantized inter-arrival time, a flow key.

Contract:
- `packet_bytes(frame, mask)` returns exactly 68 bytes (zero-padded). With `mask=True` the
  fields that identify hosts or connections rather than behaviour are zeroed: MAC addresses,
  IPv4 identification, checksum and addresses, IPv6 flow label and addresses, TCP/UDP ports,
  TCP sequence and acknowledgment numbers, TCP/UDP/ICMP checksums and TCP timestamp values.
- `quantize_iat(dt_us)` maps a gap in microseconds to 0..255: round(10 * log2(1 + dt)), capped
  (0 = first packet of a flow; about 10 steps per doubling, 255 = 50 s or more).
- Flows are directional 5-tuples; a connection is the unordered pair of its two directions.
"""

from __future__ import annotations

import math
import struct

import numpy as np

N_BYTES = 68
IAT_STEPS_PER_OCTAVE = 10

FlowKey = tuple[int, bytes, bytes, int, int]


def quantize_iat(dt_us: int) -> int:
    """Log-quantized inter-arrival time in 0..255 (see module docstring)."""
    if dt_us <= 0:
        return 0
    return min(255, int(math.floor(IAT_STEPS_PER_OCTAVE * math.log2(1.0 + dt_us) + 0.5)))


def quantize_iat_array(dt_us: np.ndarray) -> np.ndarray:
    """Vectorized `quantize_iat` (uint8)."""
    dt = np.maximum(dt_us.astype(np.float64), 0.0)
    q = np.floor(IAT_STEPS_PER_OCTAVE * np.log2(1.0 + dt) + 0.5)
    return np.clip(q, 0, 255).astype(np.uint8)


def _l3(frame: bytes) -> tuple[int, int]:
    """(ethertype, offset of the network header), skipping 802.1Q tags."""
    if len(frame) < 14:
        return -1, len(frame)
    off = 12
    etype = struct.unpack_from(">H", frame, off)[0]
    while etype in (0x8100, 0x88A8) and len(frame) >= off + 6:
        off += 4
        etype = struct.unpack_from(">H", frame, off)[0]
    return etype, off + 2


def flow_key(frame: bytes) -> FlowKey:
    """Directional flow key (protocol, src, dst, sport, dport); non-IP frames key on MACs."""
    etype, o = _l3(frame)
    proto, src, dst, l4 = -1, b"", b"", -1
    if etype == 0x0800 and len(frame) >= o + 20:
        ihl = (frame[o] & 0x0F) * 4
        proto = frame[o + 9]
        src, dst = frame[o + 12 : o + 16], frame[o + 16 : o + 20]
        frag = struct.unpack_from(">H", frame, o + 6)[0] & 0x1FFF
        l4 = o + ihl if frag == 0 else -1
    elif etype == 0x86DD and len(frame) >= o + 40:
        proto = frame[o + 6]
        src, dst = frame[o + 8 : o + 24], frame[o + 24 : o + 40]
        l4 = o + 40
    else:
        return (etype & 0xFFFF if etype >= 0 else 0) << 8, frame[6:12], frame[0:6], 0, 0
    sport = dport = 0
    if proto in (6, 17, 132) and l4 >= 0 and len(frame) >= l4 + 4:
        sport, dport = struct.unpack_from(">HH", frame, l4)
    return proto, bytes(src), bytes(dst), sport, dport


def connection_key(key: FlowKey) -> FlowKey:
    """The same key for both directions of a connection."""
    proto, src, dst, sp, dp = key
    a, b = (src, sp), (dst, dp)
    if b < a:
        a, b = b, a
    return proto, a[0], b[0], a[1], b[1]


def _zero(buf: bytearray, start: int, end: int) -> None:
    start, end = max(start, 0), min(end, len(buf))
    if start < end:
        buf[start:end] = b"\x00" * (end - start)


def packet_bytes(frame: bytes, mask: bool = True) -> bytes:
    """The first 68 bytes of `frame`, zero-padded, with identifying fields zeroed if `mask`."""
    buf = bytearray(frame[:N_BYTES].ljust(N_BYTES, b"\x00"))
    if not mask:
        return bytes(buf)
    _zero(buf, 0, 12)  # MAC addresses
    etype, o = _l3(frame)
    l4 = -1
    proto = -1
    if etype == 0x0800 and len(frame) >= o + 20:
        ihl = (frame[o] & 0x0F) * 4
        proto = frame[o + 9]
        _zero(buf, o + 4, o + 6)  # identification
        _zero(buf, o + 10, o + 20)  # checksum, source, destination
        l4 = o + ihl
    elif etype == 0x86DD and len(frame) >= o + 40:
        proto = frame[o + 6]
        buf[o + 1] &= 0xF0  # flow label (low 20 bits)
        _zero(buf, o + 2, o + 4)
        _zero(buf, o + 8, o + 40)
        l4 = o + 40
    if l4 < 0:
        return bytes(buf)
    if proto == 6:
        _zero(buf, l4, l4 + 12)  # ports, seq, ack
        _zero(buf, l4 + 16, l4 + 18)  # checksum
        if len(frame) >= l4 + 13:
            _mask_tcp_timestamps(frame, buf, l4, (frame[l4 + 12] >> 4) * 4)
    elif proto == 17:
        _zero(buf, l4, l4 + 4)
        _zero(buf, l4 + 6, l4 + 8)
    elif proto in (1, 58):
        _zero(buf, l4 + 2, l4 + 4)
    return bytes(buf)


def _mask_tcp_timestamps(frame: bytes, buf: bytearray, l4: int, doff: int) -> None:
    o, end = l4 + 20, min(l4 + doff, len(frame))
    while o < end:
        kind = frame[o]
        if kind == 0:
            return
        if kind == 1:
            o += 1
            continue
        if o + 1 >= end:
            return
        length = frame[o + 1]
        if length < 2:
            return
        if kind == 8:  # timestamps: TSval, TSecr
            _zero(buf, o + 2, o + length)
        o += length
