"""Per-flow state as the entry switch keeps it: a hash-indexed flow table, side features, and
the per-flow decision after k packets.

This module is the *reference* (host-side, used to build the data sets). The data-plane
implementation is `extract.Extractor` (register arrays, fed real frames); a test and
`tidal innet evaluate --frames N` check that both give the same values on every packet.

Flow table contract (two banks of `slots` entries, so 2 x slots flows):
- key hash `h = crc32(key)`, signature `sig = crc32(key, SIG_SEED)`; way A is `h mod slots`,
  way B is `slots + (h >> 16) mod slots` (two CRC units on an ASIC).
- An entry whose signature matches is the flow. If its last packet is older than `timeout_us`
  the entry is re-initialized (a new flow instance: generation + 1). Otherwise, a packet of an
  unknown flow claims the first of A, B that is empty or expired. If both hold live flows the
  packet is *untracked* (a collision): it gets the first-packet features and no flow verdict;
  `collisions` counts them.
- Timestamps are 48-bit microseconds; gaps are computed modulo 2^48.

Side features of a packet (each 0..255, the model's per-flow inputs):
- `iat`: `quantize_iat` of the gap to the flow's previous packet (0 = first packet);
- `prev_iat`: the previous packet's `iat` (0 for the first two packets);
- `dlen`: 128 + clip(payload length - previous payload length, -127, 127) (0 = first packet);
- `plen`: `quantize_len(payload length)` (0 = no payload: pure ACKs);
- `diat`: 128 + clip(iat - prev_iat, -127, 127) (0 until there are two gaps): regularity;
- three *modulation* features, each `flow_code(n, c)` = 16 min(n, 15) + min(c, 15) of the
  instance's packet number n and a per-flow counter c kept in a register (so one 256-entry
  table sees both how far the flow is and how often the event happened):
  `nlen`: distinct payload lengths of the data packets so far (popcount of a 32-bit bitmap
  register, one bit per `len_bucket` of the length: a linear-counting sketch), `lchg`: data
  packets whose payload length differs from the previous *data* packet's (run structure of
  the lengths; a `last_data` register holds it). Pure ACKs carry no length symbol: they set
  no bit and neither count nor break a run (counting them encoded the handshake and the ACK
  interleaving of the TCP stack, not a channel). `gchg`: packets
  whose gap code differs from the previous gap code by at least GAP_STEP (about 32 %: gap
  modulation). First packets get zeros.

Flow decision (the exit switch's vote registers, and `flow_decisions` here): each flow
instance counts covert votes of its packets numbered WARMUP+1 .. WARMUP+k (the first WARMUP
have no gap history yet); it is covert as soon as the covert
votes reach `need` (default `default_need(k)` = k - k // 4, a 3/4 quorum; early exit),
benign as soon as that can no longer happen (early exit) or at its end. A directional flow
is covert if any of its instances is.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from tidal.innet.features import FlowKey, quantize_iat

N_SIDE = 8
GAP_STEP = 4  # gap-code steps (10 per octave) that count as a changed gap: ~32 %
LEN_BUCKETS = 32
SIG_SEED = 0x5BD1E995
TS_MASK = (1 << 48) - 1
DEFAULT_SLOTS = 1024
DEFAULT_TIMEOUT_US = 60_000_000
DEFAULT_K = 16
WARMUP = 2  # a flow's first packets lack a gap / a previous gap: they do not vote
NO_SLOT = -1


def key_bytes(key: FlowKey) -> bytes:
    """The flow key as the parser lays it out for the hash units."""
    proto, src, dst, sp, dp = key
    return proto.to_bytes(3, "big") + src + dst + sp.to_bytes(2, "big") + dp.to_bytes(2, "big")


def hashes(key: FlowKey, slots: int) -> tuple[int, int, int]:
    """(way A, way B, signature) of a key."""
    kb = key_bytes(key)
    h = zlib.crc32(kb)
    return h % slots, slots + ((h >> 16) % slots), zlib.crc32(kb, SIG_SEED)


def len_code(delta: int) -> int:
    """The `dlen` / `diat` code of a change (1..255)."""
    return 128 + max(-127, min(127, delta))


def len_bucket(n: int) -> int:
    """The bitmap bit of a payload length (a CRC of the 16-bit length, as a hash unit)."""
    return zlib.crc32(min(max(n, 0), 0xFFFF).to_bytes(2, "big")) % LEN_BUCKETS


def data_bit(paylen: int) -> int:
    """The bitmap bit a packet sets: its length bucket's, none for a pure ACK."""
    return 1 << len_bucket(paylen) if paylen > 0 else 0


def flow_code(n: int, c: int) -> int:
    """A (packet number, counter) pair in one byte (module docstring)."""
    return 16 * min(n, 15) + min(c, 15)


def quantize_len(n: int) -> int:
    """Payload length code: 0 for none, else round(15 * log2(1 + n)) in 1..255."""
    if n <= 0:
        return 0
    return min(255, max(1, int(math.floor(15 * math.log2(1.0 + n) + 0.5))))


@dataclass
class PacketState:
    """What the flow table gives one packet."""

    side: tuple[int, ...]
    slot: int  # NO_SLOT when untracked
    gen: int  # instance generation of the slot (0..255)
    n: int  # packet number within the instance (1-based, saturating at 255)


class FlowTable:
    """The reference flow table (module contract); plain Python ints (it runs per packet)."""

    def __init__(self, slots: int = DEFAULT_SLOTS, timeout_us: int = DEFAULT_TIMEOUT_US) -> None:
        self.slots, self.timeout_us = slots, timeout_us
        n = 2 * slots
        self.sig = [0] * n
        self.last = [0] * n
        self.prev_iat = [0] * n
        self.prev_len = [0] * n
        self.count = [0] * n
        self.gen = [0] * n
        self.valid = [False] * n
        self.lenmap = [0] * n
        self.last_data = [0] * n  # the last data packet's payload length (0: none yet)
        self.lchg = [0] * n
        self.gchg = [0] * n
        self.collisions = 0

    def _expired(self, s: int, ts: int) -> bool:
        return ((ts - self.last[s]) & TS_MASK) > self.timeout_us

    def update(self, key: FlowKey, ts_us: int, paylen: int) -> PacketState:
        a, b, sig = hashes(key, self.slots)
        ts = ts_us & TS_MASK
        slot = next((s for s in (a, b) if self.valid[s] and self.sig[s] == sig), NO_SLOT)
        new = slot == NO_SLOT or self._expired(slot, ts)
        if slot == NO_SLOT:
            slot = next((s for s in (a, b) if not self.valid[s] or self._expired(s, ts)), NO_SLOT)
            if slot == NO_SLOT:
                self.collisions += 1
                return PacketState(first_side(paylen), NO_SLOT, 0, 0)
        if new:
            self.valid[slot] = True
            self.sig[slot] = sig
            self.gen[slot] = (self.gen[slot] + 1) & 0xFF
            self.count[slot] = 1
            self.prev_iat[slot] = 0
            self.prev_len[slot] = paylen
            self.last[slot] = ts
            self.lenmap[slot] = data_bit(paylen)
            self.last_data[slot] = paylen
            self.lchg[slot] = self.gchg[slot] = 0
            return PacketState(first_side(paylen), slot, self.gen[slot], 1)
        iat = quantize_iat((ts - self.last[slot]) & TS_MASK)
        prev, two = self.prev_iat[slot], self.count[slot] >= 2
        self.lenmap[slot] |= data_bit(paylen)
        if paylen > 0 and self.last_data[slot] > 0 and paylen != self.last_data[slot]:
            self.lchg[slot] = min(255, self.lchg[slot] + 1)
        if paylen > 0:
            self.last_data[slot] = paylen
        if two and abs(iat - prev) >= GAP_STEP:
            self.gchg[slot] = min(255, self.gchg[slot] + 1)
        n = self.count[slot] = min(255, self.count[slot] + 1)
        side = (
            iat,
            prev,
            len_code(paylen - self.prev_len[slot]),
            quantize_len(paylen),
            len_code(iat - prev) if two else 0,
            flow_code(n, bin(self.lenmap[slot]).count("1")),
            flow_code(n, self.lchg[slot]),
            flow_code(n, self.gchg[slot]),
        )
        self.prev_iat[slot] = iat
        self.prev_len[slot] = paylen
        self.last[slot] = ts
        return PacketState(side, slot, self.gen[slot], n)


def first_side(paylen: int) -> tuple[int, ...]:
    """The side features of a flow instance's first (or an untracked) packet."""
    return (0, 0, 0, quantize_len(paylen)) + (0,) * (N_SIDE - 4)


def side_features(inst: np.ndarray, ts: np.ndarray, paylen: np.ndarray) -> np.ndarray:
    """Vectorized side features for packets grouped by flow instance (N, N_SIDE) uint8.

    `inst[i]` is the instance of packet i (-1 = untracked: zeros), rows in arrival order.
    Equal to what `FlowTable` gives when the instances are the table's (used to re-draw
    timestamps for training augmentation without re-running the table).
    """
    n = len(inst)
    out = np.zeros((n, N_SIDE), dtype=np.uint8)
    order = np.lexsort((np.arange(n), inst))
    ii, tt, ll = inst[order], ts[order].astype(np.int64), paylen[order].astype(np.int64)
    same = np.r_[False, ii[1:] == ii[:-1]] & (ii >= 0)
    dt = np.r_[0, (tt[1:] - tt[:-1]) & TS_MASK]
    from tidal.innet.features import quantize_iat_array

    iat = np.where(same, quantize_iat_array(dt), 0).astype(np.int64)
    prev = np.where(same, np.r_[0, iat[:-1]], 0)
    dlen = np.where(same, 128 + np.clip(ll - np.r_[0, ll[:-1]], -127, 127), 0)
    plen = quantize_len_array(ll)
    two = same & np.r_[False, same[:-1]]
    diat = np.where(two, 128 + np.clip(iat - prev, -127, 127), 0)
    res = np.stack(
        [iat, prev, dlen, plen, diat, *_modulation(ii, same, two, ll, iat - prev)], axis=1
    ).astype(np.uint8)
    out[order] = res
    return out


_BUCKET_OF = np.array([len_bucket(v) for v in range(0x10000)], dtype=np.int64)


def _modulation(
    ii: np.ndarray, same: np.ndarray, two: np.ndarray, ll: np.ndarray, d_iat: np.ndarray
) -> list[np.ndarray]:
    """`nlen`, `lchg`, `gchg` of rows sorted by instance (module docstring)."""
    starts = ~same
    grp = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)

    def running(event: np.ndarray) -> np.ndarray:  # events so far within the instance
        c = np.cumsum(event.astype(np.int64))
        return c - (c[first] - event[first])[grp]

    idx = np.arange(len(ii))
    n = np.minimum(idx - first[grp] + 1, 255)
    data = ll > 0  # pure ACKs carry no length symbol
    bucket = np.where(data, _BUCKET_OF[np.clip(ll, 0, 0xFFFF)], -1)
    seen = np.zeros(len(ii), dtype=np.int64)
    for b in range(LEN_BUCKETS):  # bitmap popcount: buckets seen so far
        seen += running(bucket == b) > 0
    # the previous data packet of the same instance (forward fill of data rows)
    prev = np.r_[-1, np.maximum.accumulate(np.where(data, idx, -1))[:-1]]
    has = (prev >= 0) & (prev >= first[grp])
    lchg = running(data & has & (ll != ll[np.maximum(prev, 0)]))
    gchg = running(two & (np.abs(d_iat) >= GAP_STEP))

    def code(c: np.ndarray) -> np.ndarray:
        return np.where(same, 16 * np.minimum(n, 15) + np.minimum(c, 15), 0)

    return [code(seen), code(lchg), code(gchg)]


def quantize_len_array(n: np.ndarray) -> np.ndarray:
    """Vectorized `quantize_len`."""
    v = np.floor(15 * np.log2(1.0 + np.maximum(n, 0).astype(np.float64)) + 0.5)
    return np.where(n > 0, np.clip(v, 1, 255), 0).astype(np.int64)


def instance_rank(inst: np.ndarray) -> np.ndarray:
    """1-based packet number within its instance (0 for untracked packets)."""
    n = len(inst)
    order = np.lexsort((np.arange(n), inst))
    ii = inst[order]
    starts = np.r_[True, ii[1:] != ii[:-1]]
    grp = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    rank = np.arange(n) - first[grp] + 1
    out = np.zeros(n, dtype=np.int64)
    out[order] = np.where(ii >= 0, rank, 0)
    return out


def default_need(k: int) -> int:
    """Covert votes among the first k packets that make a flow covert (3/4 quorum)."""
    return max(1, k - k // 4)


def flow_decisions(
    pred: np.ndarray,
    inst: np.ndarray,
    flow: np.ndarray,
    n_flows: int,
    k: int = DEFAULT_K,
    need: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(verdict per flow, packets needed for the first verdict per flow) (module contract).

    The second array holds, per flow, the packet number at which its first instance was
    decided covert by early exit, else the number of packets the decision took (k at most).
    """
    need = default_need(k) if need is None else need
    rank = instance_rank(inst) - WARMUP
    voting = (inst >= 0) & (rank >= 1) & (rank <= k)
    verdict = np.zeros(n_flows, dtype=np.int64)
    taken = np.zeros(n_flows, dtype=np.int64)
    if not voting.any():
        return verdict, taken
    iv, pv, rv, fv = inst[voting], pred[voting], rank[voting], flow[voting]
    order = np.lexsort((rv, iv))
    iv, pv, rv, fv = iv[order], pv[order], rv[order], fv[order]
    starts = np.r_[True, iv[1:] != iv[:-1]]
    grp = np.cumsum(starts) - 1
    base = np.cumsum(pv) - pv
    first = np.flatnonzero(starts)
    votes = np.cumsum(pv) - base[first][grp]  # covert votes up to this packet (inclusive)
    hit = votes >= need
    n_inst = int(grp.max()) + 1
    hit_rank = np.where(hit, rv, 10**9)
    min_hit = np.full(n_inst, 10**9, dtype=np.int64)
    np.minimum.at(min_hit, grp, hit_rank)
    dec = min_hit < 10**9
    benign_votes = rv - votes
    # benign early exit: covert can no longer reach `need` within k packets
    lost = benign_votes > k - need
    lost_rank = np.where(lost, rv, 10**9)
    min_lost = np.full(n_inst, 10**9, dtype=np.int64)
    np.minimum.at(min_lost, grp, lost_rank)
    last_rank = np.zeros(n_inst, dtype=np.int64)
    np.maximum.at(last_rank, grp, rv)
    at = np.where(dec, min_hit, np.minimum(min_lost, last_rank))
    inst_flow = fv[first]
    np.maximum.at(verdict, inst_flow, dec.astype(np.int64))
    # packets taken by each flow's first instance
    first_inst_of_flow = np.full(n_flows, -1, dtype=np.int64)
    for g in range(n_inst - 1, -1, -1):
        first_inst_of_flow[inst_flow[g]] = g
    ok = first_inst_of_flow >= 0
    taken[ok] = at[first_inst_of_flow[ok]]
    return verdict, taken
