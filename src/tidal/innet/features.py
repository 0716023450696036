"""Per-packet features: the first 68 bytes, a log-quantized inter-arrival time, a flow key.

Contract:
- `packet_bytes(frame, mask)` returns exactly 68 bytes (zero-padded). With `mask=True` the
  fields that identify hosts or connections rather than behaviour are zeroed: MAC addresses,
  IPv4 identification, checksum and addresses, IPv6 flow label and addresses, TCP/UDP ports,
  TCP sequence and acknowledgment numbers, TCP/UDP/ICMP checksums and TCP timestamp values.
- `quantize_iat(dt_us)` maps a gap in microseconds to 0..255: round(10 * log2(1 + dt)), capped
  (0 = first packet of a flow; about 10 steps per doubling, 255 = 50 s or more).
- `channel_bytes(frame)` is the model's input (see `FIELD_POLICY` and docs/innet.md): a
  canonical 68-byte re-encoding that keeps only what can carry a covert storage channel and
  drops or normalizes what identifies the host, the tool or the path: IP and TCP options are
  stripped (TCP data offset set to 5), TTL/hop limit, IP id, window, addresses, ports,
  sequence numbers and checksums are zero, the IP total / IPv6 payload / UDP length fields
  hold the L4 payload length, and payload content is zero. `payload_length(frame)` is that
  length. A frame re-drawn by `perturb.py` (other host fingerprints) gives the same bytes.
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
        ihl = max(20, (frame[o] & 0x0F) * 4)
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


FIELD_POLICY: tuple[tuple[str, str, str], ...] = (
    # (field, decision, reason) -- rendered in docs/innet.md; `channel_bytes` implements it.
    ("MAC addresses", "mask", "identify the hosts / NICs"),
    ("802.1Q tags", "strip", "path (VLAN) fingerprint; the parser skips them"),
    ("ethertype", "keep", "protocol, not a host property"),
    ("IPv4 IHL / IPv6 next header", "keep", "IP options present or not (option channels)"),
    ("IP options bytes", "strip", "layout is tool/OS specific; presence kept via IHL"),
    ("TOS / DSCP / ECN, IPv6 traffic class", "keep", "a known storage channel"),
    (
        "IP total length / IPv6 payload length",
        "normalize",
        "L4 payload length: keeps size modulation, drops the option-length fingerprint",
    ),
    ("IPv4 identification", "mask", "host counter (incrementing, random or zero)"),
    ("IPv4 flags, fragment offset", "keep", "reserved/DF/MF bits are storage channels"),
    ("TTL / hop limit", "mask", "initial TTL is the OS, the decrement is the path"),
    ("protocol", "keep", "protocol"),
    ("IP checksum", "mask", "follows from the other fields"),
    ("addresses, ports", "mask", "identify hosts and the tool's port"),
    ("IPv6 flow label", "mask", "per-connection random value"),
    ("TCP sequence / acknowledgment numbers", "mask", "random initial values"),
    ("TCP data offset", "normalize", "set to 5 (options stripped)"),
    ("TCP reserved bits, flags", "keep", "storage channels (reserved bits, flag combinations)"),
    ("TCP window", "mask", "OS default and receive buffer state: host, not channel"),
    ("TCP urgent pointer", "keep", "a known storage channel (urgent pointer without URG)"),
    (
        "TCP options (MSS, wscale, SACK, timestamps)",
        "strip",
        "layout and values fingerprint the OS; TSval is a host clock",
    ),
    ("UDP length", "normalize", "L4 payload length"),
    ("TCP/UDP/ICMP checksums", "mask", "follow from the other fields"),
    ("ICMP type/code", "keep", "protocol"),
    ("ICMP rest of header", "mask", "identifier/sequence identify the sender"),
    (
        "payload content",
        "mask",
        "application or tool data (a tool fingerprint); its length is kept",
    ),
    (
        "packet timestamps",
        "augment",
        "the inter-arrival time is the channel; training re-draws path jitter and rate",
    ),
)


def _ip_parse(frame: bytes) -> tuple[int, int, int, int, int, int] | None:
    """(ethertype, ip offset, ip header length, l4 protocol, l4 offset or -1, ip payload
    length) of an IPv4/IPv6 frame, or None."""
    etype, o = _l3(frame)
    if etype == 0x0800 and len(frame) >= o + 20:
        ihl = max(20, (frame[o] & 0x0F) * 4)
        total = struct.unpack_from(">H", frame, o + 2)[0]
        frag = struct.unpack_from(">H", frame, o + 6)[0] & 0x1FFF
        return etype, o, ihl, frame[o + 9], (o + ihl if frag == 0 else -1), max(0, total - ihl)
    if etype == 0x86DD and len(frame) >= o + 40:
        plen = struct.unpack_from(">H", frame, o + 4)[0]
        return etype, o, 40, frame[o + 6], o + 40, plen
    return None


def payload_length(frame: bytes) -> int:
    """L4 payload bytes (from the IP length fields; frame bytes after Ethernet for non-IP)."""
    p = _ip_parse(frame)
    if p is None:
        return max(0, len(frame) - 14)
    _etype, _o, _ihl, proto, l4, plen = p
    if l4 < 0:
        return plen
    if proto == 6 and len(frame) >= l4 + 20:
        return max(0, plen - (frame[l4 + 12] >> 4) * 4)
    if proto == 17 and len(frame) >= l4 + 8:
        return max(0, plen - 8)
    return plen


def channel_bytes(frame: bytes) -> bytes:
    """The canonical 68 bytes the model sees (module docstring, `FIELD_POLICY`)."""
    out = bytearray(N_BYTES)
    p = _ip_parse(frame)
    etype, _ = _l3(frame)
    out[12:14] = struct.pack(">H", max(etype, 0) & 0xFFFF)
    if p is None:
        return bytes(out)
    etype, o, ihl, proto, l4, _plen = p
    plen = min(payload_length(frame), 0xFFFF)
    if etype == 0x0800:
        out[14] = frame[o]  # version + IHL (options present or not)
        out[15] = frame[o + 1]  # TOS
        out[16:18] = struct.pack(">H", plen)
        out[20:22] = frame[o + 6 : o + 8]  # flags + fragment offset
        out[23] = proto
        t = 34
    else:
        out[14] = frame[o]  # version + traffic class (high nibble)
        out[15] = frame[o + 1] & 0xF0  # traffic class (low nibble); flow label masked
        out[18:20] = struct.pack(">H", plen)
        out[20] = proto
        t = 54
    if l4 < 0:
        return bytes(out)
    hdr = bytearray(20)
    if proto == 6 and len(frame) >= l4 + 20:
        hdr[12] = 0x50 | (frame[l4 + 12] & 0x0F)  # data offset 5, reserved bits kept
        hdr[13] = frame[l4 + 13]  # flags
        hdr[18:20] = frame[l4 + 18 : l4 + 20]  # urgent pointer
    elif proto == 17 and len(frame) >= l4 + 8:
        hdr[4:6] = struct.pack(">H", plen)
        hdr = hdr[:8]
    elif proto in (1, 58) and len(frame) >= l4 + 2:
        hdr[0:2] = frame[l4 : l4 + 2]
        hdr = hdr[:8]
    else:
        hdr = bytearray()
    n = min(len(hdr), N_BYTES - t)
    out[t : t + n] = hdr[:n]
    return bytes(out)


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
