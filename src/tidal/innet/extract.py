"""Feature extraction and the per-flow decision in the data plane: the entry and exit switches.

`Extractor` (the entry switch) receives the network's own Ethernet frames. Its parser walks
Ethernet -> 802.1Q* -> IPv4 | IPv6 -> TCP | UDP | ICMP; its deparser writes the canonical
channel bytes (features.FIELD_POLICY: options stripped, host fields zeroed, lengths
normalized). It timestamps every frame itself: with its own clock (live mode), or, for a
replayed capture, with the ingress timestamp carried by a replay shim (ethertype 0x88B6,
8 bytes of microseconds, then the original frame) - the way a packet generator stamps
frames; wall-clock replay cannot reproduce a capture's gaps bit for bit. Its flow table
(register arrays, two hash ways, signature check, timeout; the contract in flowstate.py)
yields the side features. It emits, per packet, the bytes (stream 0) to the first layer's
switches, the side features (stream 1) to the dense layer's switches, and the flow slot
(stream FLOW) to the exit switch.

`Decider` (the exit switch) joins each packet's verdict (stream 255, from the last layer's
switch) with its flow slot and keeps per-flow vote registers: the decision after k packets
with early exit (flowstate.py). It emits stream DECISION to the host: verdict, both logits,
the decision made with this packet (0 none, 1 covert, 2 benign), slot, generation, packet
number.

Both drop malformed frames and count them (never raise), like `switch.Switch`.
"""

from __future__ import annotations

import bisect
import struct
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from tidal.core.clock import Clock, MonotonicClock
from tidal.innet.features import N_BYTES, quantize_iat
from tidal.innet.flowstate import (
    DEFAULT_K,
    DEFAULT_SLOTS,
    DEFAULT_TIMEOUT_US,
    GAP_STEP,
    N_SIDE,
    SIG_SEED,
    TS_MASK,
    WARMUP,
    default_need,
    len_bucket,
    quantize_len,
)
from tidal.innet.header import Frame, MalformedFrame, decode, encode
from tidal.innet.program import STREAM_BYTES, STREAM_IAT, STREAM_VERDICT

REPLAY_ETHERTYPE = 0x88B6
CONTROL_ETHERTYPE = 0x88B7  # control plane: clear the flow registers (a new capture)
RESET_FRAME = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\xfd" + CONTROL_ETHERTYPE.to_bytes(2, "big")
STREAM_FLOW, STREAM_DECISION = 254, 253
_ETH_FIXED = struct.Struct(">6s6sH")


def replay_frame(frame: bytes, ts_us: int) -> bytes:
    """A captured frame wrapped in the replay shim (its capture time as ingress timestamp)."""
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\xfe" + struct.pack(">HQ", REPLAY_ETHERTYPE, ts_us)


def wrap(frame: bytes, ts_us: int) -> bytes:
    """`replay_frame` header + the frame."""
    return replay_frame(frame, ts_us) + frame


LEN_BUCKET = [len_bucket(v) for v in range(0x10000)]  # the CRC hash unit on the length
POPCOUNT8 = [bin(v).count("1") for v in range(256)]  # 4 byte-wise lookup tables + adders


def _iat_thresholds() -> list[int]:
    """thr[q-1] = smallest gap (us) whose code is >= q: the range-match table's entries."""
    out = []
    lo = 1
    for q in range(1, 256):
        hi = 1 << 50
        while lo < hi:  # binary search on the monotone code
            mid = (lo + hi) // 2
            if quantize_iat(mid) >= q:
                hi = mid
            else:
                lo = mid + 1
        out.append(lo)
    return out


IAT_RANGES = _iat_thresholds()


def _len_thresholds() -> list[int]:
    """thr[q-1] = smallest payload length whose `quantize_len` code is >= q."""
    out, n = [], 0
    for q in range(1, 256):
        while n < 1 << 17 and quantize_len(n) < q:
            n += 1
        out.append(n if quantize_len(n) >= q else 1 << 30)
    return out


LEN_RANGES = _len_thresholds()


@dataclass
class Parsed:
    """Header fields the parser extracted (what a P4 parser leaves in the PHV)."""

    etype: int
    smac: bytes
    dmac: bytes
    ip: dict[str, Any] | None
    l4: dict[str, Any] | None


def parse(frame: bytes) -> Parsed:
    """Ethernet -> 802.1Q* -> IPv4 | IPv6 -> TCP | UDP | ICMP."""
    if len(frame) < 14:
        raise MalformedFrame(f"runt of {len(frame)} bytes")
    dmac, smac, etype = _ETH_FIXED.unpack_from(frame, 0)
    o = 14
    while etype in (0x8100, 0x88A8) and len(frame) >= o + 4:
        etype = struct.unpack_from(">H", frame, o + 2)[0]
        o += 4
    p = Parsed(etype, smac, dmac, None, None)
    if etype == 0x0800 and len(frame) >= o + 20:
        vihl, tos, total, _ident, ffo, _ttl, proto = struct.unpack_from(">BBHHHBB", frame, o)
        ihl = max(20, (vihl & 0x0F) * 4)
        p.ip = {
            "v": 4, "vihl": vihl, "tos": tos, "ffo": ffo, "proto": proto,
            "src": frame[o + 12 : o + 16], "dst": frame[o + 16 : o + 20],
            "payload": max(0, total - ihl),
        }  # fmt: skip
        l4 = o + ihl if ffo & 0x1FFF == 0 else -1
    elif etype == 0x86DD and len(frame) >= o + 40:
        b0, b1, _flow, plen, proto = struct.unpack_from(">BBHHB", frame, o)
        p.ip = {
            "v": 6, "b0": b0, "b1": b1, "proto": proto,
            "src": frame[o + 8 : o + 24], "dst": frame[o + 24 : o + 40], "payload": plen,
        }  # fmt: skip
        l4 = o + 40
    else:
        return p
    proto = p.ip["proto"]
    if l4 < 0:
        return p
    if proto == 6 and len(frame) >= l4 + 20:
        sp, dp, _seq, _ack, offres, flags, _win, _ck, urg = struct.unpack_from(
            ">HHIIBBHHH", frame, l4
        )
        p.l4 = {"proto": 6, "sp": sp, "dp": dp, "off": offres, "flags": flags, "urg": urg}
    elif proto == 17 and len(frame) >= l4 + 8:
        sp, dp = struct.unpack_from(">HH", frame, l4)
        p.l4 = {"proto": 17, "sp": sp, "dp": dp}
    elif proto in (1, 58) and len(frame) >= l4 + 2:
        p.l4 = {"proto": proto, "type": frame[l4], "code": frame[l4 + 1]}
    elif proto in (6, 17, 132) and len(frame) >= l4 + 4:
        sp, dp = struct.unpack_from(">HH", frame, l4)
        p.l4 = {"proto": -proto, "sp": sp, "dp": dp}  # ports only (short header / SCTP)
    return p


def flow_key_of(p: Parsed) -> tuple[int, bytes, bytes, int, int]:
    if p.ip is None:
        return (p.etype & 0xFFFF) << 8, p.smac, p.dmac, 0, 0
    sp = dp = 0
    if p.l4 is not None and "sp" in p.l4:
        sp, dp = p.l4["sp"], p.l4["dp"]
    return p.ip["proto"], p.ip["src"], p.ip["dst"], sp, dp


def payload_of(p: Parsed, frame_len: int) -> int:
    if p.ip is None:
        return max(0, frame_len - 14)
    plen = int(p.ip["payload"])
    if p.l4 is None:
        return plen
    if p.l4["proto"] == 6:
        return max(0, plen - (p.l4["off"] >> 4) * 4)
    if p.l4["proto"] == 17:
        return max(0, plen - 8)
    return plen


def deparse(p: Parsed, plen: int) -> bytes:
    """The canonical channel bytes (features.FIELD_POLICY) from the parsed headers."""
    out = bytearray(N_BYTES)
    out[12:14] = struct.pack(">H", p.etype)
    if p.ip is None:
        return bytes(out)
    plen = min(plen, 0xFFFF)
    if p.ip["v"] == 4:
        out[14], out[15] = p.ip["vihl"], p.ip["tos"]
        out[16:18] = struct.pack(">H", plen)
        out[20:22] = struct.pack(">H", p.ip["ffo"])
        out[23] = p.ip["proto"]
        t = 34
    else:
        out[14], out[15] = p.ip["b0"], p.ip["b1"] & 0xF0
        out[18:20] = struct.pack(">H", plen)
        out[20] = p.ip["proto"]
        t = 54
    h = p.l4
    if h is None or h["proto"] < 0:
        return bytes(out)
    if h["proto"] == 6:
        l4 = bytearray(20)
        l4[12], l4[13] = 0x50 | (h["off"] & 0x0F), h["flags"]
        l4[18:20] = struct.pack(">H", h["urg"])
    elif h["proto"] == 17:
        l4 = bytearray(8)
        l4[4:6] = struct.pack(">H", plen)
    else:
        l4 = bytearray(8)
        l4[0], l4[1] = h["type"], h["code"]
    n = min(len(l4), N_BYTES - t)
    out[t : t + n] = l4[:n]
    return bytes(out)


class Extractor:
    """The entry switch (module docstring). Routes: stream -> next-hop switch ids."""

    def __init__(
        self,
        routes: dict[int, list[int]],
        input_frag: int = N_BYTES,
        slots: int = DEFAULT_SLOTS,
        timeout_us: int = DEFAULT_TIMEOUT_US,
        side_width: int = N_SIDE,
        clock: Clock | None = None,
    ) -> None:
        self.routes, self.input_frag, self.side_width = routes, input_frag, side_width
        self.slots, self.timeout_us = slots, timeout_us
        self.clock = clock or MonotonicClock()
        self.index = 0
        self.counters: Counter[str] = Counter()
        self.reset()

    def reset(self) -> None:
        """Clear the flow registers (the control plane does this between replays)."""
        n = 2 * self.slots  # register arrays, one entry per way and slot
        self.r_sig = [0] * n
        self.r_last = [0] * n
        self.r_iat = [0] * n
        self.r_len = [0] * n
        self.r_cnt = [0] * n
        self.r_gen = [0] * n
        self.r_valid = [0] * n
        self.r_lenmap = [0] * n  # 32-bit bitmap of length buckets (popcount: nlen)
        self.r_ldata = [0] * n  # the last data packet's payload length (16 bits; 0: none)
        self.r_lchg = [0] * n  # data-length changes (8 bits)
        self.r_gchg = [0] * n  # gap changes >= GAP_STEP (8 bits)

    @staticmethod
    def _first(plen: int) -> tuple[int, ...]:
        return (0, 0, 0, bisect.bisect_right(LEN_RANGES, plen)) + (0,) * (N_SIDE - 4)

    @staticmethod
    def _len_code(plen: int) -> int:
        return bisect.bisect_right(LEN_RANGES, plen)  # a range-match table on the length

    def _table(
        self, key: tuple[int, bytes, bytes, int, int], ts: int, plen: int
    ) -> tuple[tuple[int, ...], int, int, int]:
        proto, src, dst, sp, dp = key
        kb = struct.pack(">I", proto)[1:] + src + dst + struct.pack(">HH", sp, dp)
        h = zlib.crc32(kb)  # CRC unit 1
        sig = zlib.crc32(kb, SIG_SEED)  # CRC unit 2
        ways = (h % self.slots, self.slots + ((h >> 16) % self.slots))
        live = [self.r_valid[w] and ((ts - self.r_last[w]) & TS_MASK) <= self.timeout_us
                for w in ways]  # fmt: skip
        hit = [self.r_valid[w] and self.r_sig[w] == sig for w in ways]
        if hit[0] or hit[1]:
            w = ways[0] if hit[0] else ways[1]
            fresh = not live[0 if hit[0] else 1]
        elif not live[0] or not live[1]:
            w = ways[0] if not live[0] else ways[1]
            fresh = True
        else:
            self.counters["flow_collisions"] += 1
            return self._first(plen), -1, 0, 0
        if fresh:
            self.r_valid[w], self.r_sig[w] = 1, sig
            self.r_gen[w] = (self.r_gen[w] + 1) & 0xFF
            self.r_cnt[w], self.r_iat[w], self.r_len[w], self.r_last[w] = 1, 0, plen, ts
            self.r_lenmap[w] = (1 << LEN_BUCKET[min(plen, 0xFFFF)]) if plen > 0 else 0
            self.r_ldata[w] = plen
            self.r_lchg[w] = self.r_gchg[w] = 0
            self.counters["flows_started"] += 1
            return self._first(plen), w, self.r_gen[w], 1
        dt = (ts - self.r_last[w]) & TS_MASK
        iat = bisect.bisect_right(IAT_RANGES, dt)  # the range-match table
        prev = self.r_iat[w]
        dlen = 128 + max(-127, min(127, plen - self.r_len[w]))
        two = self.r_cnt[w] >= 2
        diat = 128 + max(-127, min(127, iat - prev)) if two else 0
        # modulation registers: length bitmap (OR), length / gap change counters (+1, sat.)
        # (pure ACKs carry no length symbol: no bitmap bit, no change, last_data kept)
        if plen > 0:
            self.r_lenmap[w] |= 1 << LEN_BUCKET[min(plen, 0xFFFF)]
            changed = self.r_ldata[w] > 0 and plen != self.r_ldata[w]
            self.r_lchg[w] = min(255, self.r_lchg[w] + changed)
            self.r_ldata[w] = plen
        self.r_gchg[w] = min(255, self.r_gchg[w] + (two and abs(iat - prev) >= GAP_STEP))
        n = self.r_cnt[w] = min(255, self.r_cnt[w] + 1)
        nc = 16 * min(n, 15)  # the (packet number, counter) code tables
        pop = POPCOUNT8[self.r_lenmap[w] & 0xFF] + POPCOUNT8[(self.r_lenmap[w] >> 8) & 0xFF]
        pop += POPCOUNT8[(self.r_lenmap[w] >> 16) & 0xFF] + POPCOUNT8[self.r_lenmap[w] >> 24]
        mod = (nc + min(pop, 15), nc + min(self.r_lchg[w], 15), nc + min(self.r_gchg[w], 15))
        side = (iat, prev, dlen, self._len_code(plen), diat, *mod)
        self.r_iat[w], self.r_len[w], self.r_last[w] = iat, plen, ts
        return side, w, self.r_gen[w], n

    def receive(self, raw: bytes) -> list[tuple[int, bytes]]:
        """One frame in; (next hop, frame) pairs out. Malformed frames are counted."""
        self.counters["frames"] += 1
        etype = struct.unpack_from(">H", raw, 12)[0] if len(raw) >= 14 else -1
        if etype == CONTROL_ETHERTYPE:
            self.reset()
            self.counters["resets"] += 1
            return [(h, raw) for h in self.routes.get(STREAM_FLOW, [])]  # the exit switch too
        if len(raw) >= 22 and etype == REPLAY_ETHERTYPE:
            ts = struct.unpack_from(">Q", raw, 14)[0] & TS_MASK
            frame = raw[22:]
        else:
            ts = int(self.clock.now() * 1_000_000) & TS_MASK
            frame = raw
        try:
            p = parse(frame)
        except MalformedFrame as e:
            self.counters["malformed"] += 1
            self.counters[f"malformed: {str(e).split(' ')[0]}"] += 1
            return []
        plen = payload_of(p, len(frame))
        side, slot, gen, n = self._table(flow_key_of(p), ts, plen)
        x = np.frombuffer(deparse(p, plen), dtype=np.uint8).astype(np.int64)
        idx = self.index
        self.index = (self.index + 1) & 0xFFFFFFFF
        fr = self.input_frag
        nfrag = -(-N_BYTES // fr)
        out: list[tuple[int, bytes]] = []
        frames = [
            Frame(STREAM_BYTES, idx, 0, k, nfrag, 1, k * fr, x[k * fr : (k + 1) * fr])
            for k in range(nfrag)
        ]
        frames.append(
            Frame(STREAM_IAT, idx, 0, 0, 1, 1, 0, np.array(side[: self.side_width], np.int64))
        )
        frames.append(Frame(STREAM_FLOW, idx, 0, 0, 1, 2, 0, np.array([slot + 1, gen, n])))
        for f in frames:
            raw_out = encode(f)
            out.extend((hop, raw_out) for hop in self.routes.get(f.stream, []))
        self.counters["emitted_samples"] += 1
        return out

    @property
    def stats(self) -> dict[str, int]:
        """Stages, registers and header bits of the entry switch (docs/innet.md)."""
        return extractor_resources(self.slots)


def extractor_resources(slots: int) -> dict[str, int]:
    """The entry switch's resource figures (the accounting is in docs/innet.md)."""
    # sig, 48-bit ts (pair), iat, len, count, gen, valid, length bitmap, last data length,
    # lchg, gchg
    per_entry = 4 + 8 + 1 + 2 + 1 + 1 + 1 + 4 + 2 + 1 + 1
    return {
        "stages": 10,
        "register_bytes": 2 * slots * per_entry,
        "header_bits_out": 112 + 8 * N_BYTES,
        "flow_entries": 2 * slots,
    }


class Decider:
    """The exit switch (module docstring)."""

    def __init__(
        self,
        k: int = DEFAULT_K,
        slots: int = 64,
        flow_slots: int = DEFAULT_SLOTS,
        need: int | None = None,
    ) -> None:
        self.k, self.need = k, default_need(k) if need is None else need
        self.slots, self.flow_slots = slots, flow_slots
        self.pending: dict[int, dict[int, np.ndarray]] = {}
        self.counters: Counter[str] = Counter()
        self.reset()

    def reset(self) -> None:
        """Clear the vote registers."""
        n = 2 * self.flow_slots + 1
        self.r_gen = [-1] * n
        self.r_cov = [0] * n
        self.r_ben = [0] * n
        self.r_done = [0] * n

    def receive(self, raw: bytes) -> list[tuple[int, bytes]]:
        self.counters["frames"] += 1
        if len(raw) >= 14 and struct.unpack_from(">H", raw, 12)[0] == CONTROL_ETHERTYPE:
            self.reset()
            self.counters["resets"] += 1
            return []
        try:
            f = decode(raw)
        except MalformedFrame as e:
            self.counters["malformed"] += 1
            self.counters[f"malformed: {str(e).split(' ')[0]}"] += 1
            return []
        if f.stream not in (STREAM_VERDICT, STREAM_FLOW) or f.vector.size != 3:
            self.counters["malformed"] += 1
            self.counters["malformed: unexpected stream/shape"] += 1
            return []
        win = self.pending.setdefault(f.index, {})
        win[f.stream] = f.vector
        if len(win) < 2:
            return []
        del self.pending[f.index]
        if len(self.pending) > self.slots:  # window registers overflowed: oldest evicted
            self.counters["evicted"] += 1
            self.pending.pop(next(iter(self.pending)))
        v, (slot1, gen, n) = win[STREAM_VERDICT], (int(a) for a in win[STREAM_FLOW])
        decision = self._vote(int(slot1), gen, n, int(v[0]))
        vec = np.array([v[0], v[1], v[2], decision, slot1, gen, n], dtype=np.int64)
        self.counters["emitted_samples"] += 1
        return [(-1, encode(Frame(STREAM_DECISION, f.index, 0, 0, 1, 4, 0, vec)))]

    def _vote(self, slot1: int, gen: int, n: int, verdict: int) -> int:
        n -= WARMUP
        if slot1 == 0 or n > self.k or n < 1:
            return 0
        if self.r_gen[slot1] != gen:  # a new flow instance in this slot
            self.r_gen[slot1], self.r_cov[slot1], self.r_ben[slot1] = gen, 0, 0
            self.r_done[slot1] = 0
        if self.r_done[slot1]:
            return 0
        if verdict:
            self.r_cov[slot1] += 1
        else:
            self.r_ben[slot1] += 1
        if self.r_cov[slot1] >= self.need:
            self.r_done[slot1] = 1
            return 1
        if self.r_ben[slot1] > self.k - self.need:
            self.r_done[slot1] = 2
            return 2
        return 0
