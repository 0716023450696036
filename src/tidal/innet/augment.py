"""Training-time augmentation that re-draws what is a setting of the tool, not of the channel.

Every flow instance is first cut into blocks of `block` packets that count as instances of
their own (`blocks`). Contract: `redraw(ps, cfg, rng)` returns (side features, channel
bytes, labels 0/1) for every row of `ps`, re-drawn once per epoch (RETURN rows are labeled
benign). Per flow instance:
- **timing** (every instance, `cfg.augment`): all gaps scaled by one factor, log-uniform in
  [1/`rate_spread`, `rate_spread`] (other timing parameters), plus half-normal per-gap path
  jitter with a per-instance sigma up to `jitter_us`;
- **size alphabet** (covert instances, probability `size_channel`): the channel is re-encoded
  as a *payload-length modulation* with a random alphabet: m symbols (2..`max_symbols`), a
  base length log-uniform in 1..1400 bytes and a symbol spacing log-uniform in
  1..`max_spacing` bytes; each data packet (payload > 0) carries one random symbol (the
  symbol probabilities are drawn per instance). With probability 1/2 its timing is made
  *regular* (period log-uniform in 2 ms..2 s, relative jitter up to 30 %), i.e. the gaps no
  longer carry the channel; otherwise the gaps keep the original channel's modulation;
- **gap alphabet** (covert instances, probability `gap_channel`, exclusive of the others):
  the gaps re-encoded as a timing channel with m symbols tau (1 + j s), j < m, tau
  log-uniform in 2..500 ms, s log-uniform in 0.25..2, random symbols, relative jitter up to
  10 %;
- **channel removed** (covert instances, probability `neutral`, exclusive of the above): a
  counterfactual copy with the modulation taken out, *labeled benign*: every data packet the
  instance's first data length, the gaps regular (the same period and jitter distribution as
  above). It teaches that the tool's packet shape, rate and header bytes are not the
  channel; only their modulation is. Its first 0..`preamble` packets get random lengths
  (1..MAX_LEN) and random gaps (20 us..2 s): a protocol's greeting before its steady state;
- **poller** (covert instances, probability `alternate`, exclusive of the above): a
  counterfactual copy *labeled benign* shaped like request/response polling (modbus, redis,
  keep-alives): the data packets strictly alternate between two random lengths, the gaps
  are one period (log-uniform in 2 ms..2 s) or alternate between it and a second level
  (1.5..20 times it), relative jitter up to 10 %. A strict alternation changes the length
  on every packet with only two distinct lengths, which a random 2-symbol message does on
  16 packets with probability 2^-15; it teaches that a regular pattern is not data;
- **length offset** (the covert instances not re-encoded, probability `length_redraw`):
  every data packet's payload length moved by one random offset (a tool's fixed message
  size), applied before the channel removal.
Pure ACKs stay empty. The channel bytes' length fields (IPv4 total / IPv6 payload / UDP
length, all holding the L4 payload length, features.channel_bytes) are rewritten to the new
length, so the byte branch and the side features see the same packet. What this encodes is
a prior, documented in docs/innet.md: covert channels modulate sizes or gaps, and the
alphabet, message size and rate are the tool's choice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tidal.innet.flowstate import side_features

MAX_LEN = 1400  # a payload that fits an Ethernet MTU with headers


def _sorted_gaps(inst: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort((np.arange(len(inst)), inst))
    ii = inst[order]
    same = np.r_[False, ii[1:] == ii[:-1]] & (ii >= 0)
    tt = ts[order].astype(np.float64)
    gap = np.where(same, np.r_[0.0, tt[1:] - tt[:-1]], 0.0)
    return order, same, gap


def _loguniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def set_length(x: np.ndarray, rows: np.ndarray, length: np.ndarray) -> None:
    """Rewrite the L4 payload length fields of channel-byte rows in place."""
    if rows.size == 0:
        return
    v = np.minimum(length, 0xFFFF).astype(np.int64)
    hi, lo = (v >> 8).astype(np.uint8), (v & 0xFF).astype(np.uint8)
    et = x[rows, 12].astype(np.int64) << 8 | x[rows, 13]
    v4, v6 = et == 0x0800, et == 0x86DD
    for mask, at, proto_at, t in ((v4, 16, 23, 34), (v6, 18, 20, 54)):
        r = rows[mask]
        x[r, at], x[r, at + 1] = hi[mask], lo[mask]
        udp = mask & (x[rows, proto_at] == 17)
        ru = rows[udp]
        x[ru, t + 4], x[ru, t + 5] = hi[udp], lo[udp]


def _rank(same: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Events so far (this row included) within each instance of rows sorted by instance."""
    c = np.cumsum(event.astype(np.int64))
    first = np.flatnonzero(~same)
    grp = np.cumsum(~same) - 1
    return c - (c[first] - event[first].astype(np.int64))[grp]


def _alternation(
    rng: np.random.Generator, n_inst: int, g: np.ndarray, same: np.ndarray, data: np.ndarray
) -> np.ndarray:
    """Per sorted row: one of two distinct per-instance lengths, alternating over the data
    packets (a poller's request/response sizes; module doc)."""
    a = np.round(_loguniform(rng, 1.0, MAX_LEN, n_inst)).astype(np.int64)
    b = np.round(_loguniform(rng, 1.0, MAX_LEN, n_inst)).astype(np.int64)
    b = np.where(b == a, np.where(a < MAX_LEN, a + 1, a - 1), b)
    return np.where(_rank(same, data) % 2 == 1, a[g], b[g])


def _two_levels(
    rng: np.random.Generator, n_inst: int, g: np.ndarray, same: np.ndarray
) -> np.ndarray:
    """Per sorted row: a poller's gap, one period or two alternating levels (module doc)."""
    period = _loguniform(rng, 2_000.0, 2_000_000.0, n_inst)
    ratio = np.where(rng.random(n_inst) < 0.5, 1.0, _loguniform(rng, 1.5, 20.0, n_inst))
    odd = _rank(same, np.ones(len(g), dtype=bool)) % 2 == 1
    level = np.where(odd, period[g] * ratio[g], period[g])
    rel = rng.uniform(0.0, 0.1, n_inst)
    return level * np.maximum(0.05, 1.0 + rel[g] * rng.normal(0.0, 1.0, len(g)))


def blocks(inst: np.ndarray, block: int) -> np.ndarray:
    """Instance ids with every flow instance cut into blocks of `block` packets, each its own
    instance (so training sees the first packets of flows, where the decision is made, many
    times, not once per flow); untracked rows stay -1."""
    if block <= 0 or not len(inst):
        return inst
    order = np.lexsort((np.arange(len(inst)), inst))
    ii = inst[order]
    starts = np.r_[True, ii[1:] != ii[:-1]]
    first = np.flatnonzero(starts)
    rank = np.arange(len(ii)) - first[np.cumsum(starts) - 1]
    cut = starts | (rank % block == 0)
    new = np.empty(len(inst), dtype=np.int64)
    new[order] = np.where(ii >= 0, np.cumsum(cut) - 1, -1)
    return new


def redraw(
    ps: Any, cfg: Any, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(side features, channel bytes, labels) of every row after one re-draw (module doc)."""
    inst, y = blocks(ps.inst, cfg.block), np.maximum(ps.y, 0)
    n_inst = int(inst.max()) + 1 if len(inst) else 0
    order, same, gap = _sorted_gaps(inst, ps.ts)
    g = np.maximum(inst[order], 0)
    scale = _loguniform(rng, 1.0 / cfg.rate_spread, cfg.rate_spread, n_inst)
    sigma = rng.uniform(0.0, cfg.jitter_us, n_inst)
    jit = np.abs(rng.normal(0.0, 1.0, len(gap))) * sigma[g]
    gap = np.where(same, gap * scale[g] + jit, 0.0)
    paylen = ps.paylen[order].astype(np.int64)
    x = ps.x
    covert = np.zeros(n_inst, dtype=bool)
    covert[inst[(inst >= 0) & (y == 1)]] = True
    mode = rng.random(n_inst)
    size = covert & (mode < cfg.size_channel)
    neutral = covert & ~size & (mode < cfg.size_channel + cfg.neutral)
    used = cfg.size_channel + cfg.neutral + cfg.gap_channel
    timing = covert & ~size & ~neutral & (mode < used)
    alternate = covert & ~size & ~neutral & ~timing & (mode < used + cfg.alternate)
    if timing.any():  # a gap alphabet: tau * (1 + j * spacing), j < m, random symbols
        m = rng.integers(2, cfg.max_symbols + 1, n_inst)
        tau = _loguniform(rng, 2_000.0, 500_000.0, n_inst)
        step = _loguniform(rng, 0.25, 2.0, n_inst)
        p0 = rng.uniform(0.2, 0.8, n_inst)
        sym = np.where(
            rng.random(len(gap)) < p0[g], 0, 1 + np.floor(rng.random(len(gap)) * (m[g] - 1))
        )
        rel = rng.uniform(0.0, 0.1, n_inst)
        tg = tau[g] * (1.0 + np.minimum(sym, m[g] - 1) * step[g])
        tg = tg * np.maximum(0.05, 1.0 + rel[g] * rng.normal(0.0, 1.0, len(gap)))
        gap = np.where(same & timing[g], tg, gap)
    offset = covert & ~size & (rng.random(n_inst) < cfg.length_redraw)
    data = (paylen > 0) & (inst[order] >= 0)
    label = y.copy()
    if size.any() or offset.any() or neutral.any() or alternate.any():
        x = ps.x.copy()
        m = rng.integers(2, cfg.max_symbols + 1, n_inst)
        spacing = np.round(_loguniform(rng, 1.0, cfg.max_spacing, n_inst)).astype(np.int64)
        base = np.round(_loguniform(rng, 1.0, MAX_LEN, n_inst)).astype(np.int64)
        base = np.maximum(1, np.minimum(base, MAX_LEN - (m - 1) * spacing))
        # symbol probabilities per instance: a skewed message is as possible as a uniform one
        p1 = rng.uniform(0.2, 0.8, n_inst)
        u = rng.random(len(gap))
        sym = np.where(u < p1[g], 0, 1 + np.floor(rng.random(len(gap)) * (m[g] - 1)))
        sym = np.minimum(sym.astype(np.int64), m[g] - 1)
        new_len = base[g] + sym * spacing[g]
        lo = np.full(n_inst, MAX_LEN, dtype=np.int64)
        hi = np.zeros(n_inst, dtype=np.int64)
        np.minimum.at(lo, g[data], paylen[data])
        np.maximum.at(hi, g[data], paylen[data])
        room = np.maximum(0, MAX_LEN - hi + lo - 1)  # offsets keeping 1 <= length <= MAX_LEN
        delta = np.floor(rng.random(n_inst) * (room + 1)).astype(np.int64) + 1 - lo
        shifted = np.maximum(1, paylen + delta[g])
        is_size, is_off, is_neu = data & size[g], data & offset[g], data & neutral[g]
        paylen = np.where(is_size, new_len, np.where(is_off, shifted, paylen))
        first_len = np.zeros(n_inst, dtype=np.int64)
        di = np.flatnonzero(data)[::-1]  # the last write wins: the first data packet's length
        first_len[g[di]] = paylen[di]
        paylen = np.where(is_neu, first_len[g], paylen)
        # a protocol preamble before the steady state: the first `pre` packets of a neutral
        # copy get random lengths (data packets) and random gaps
        pre = np.where(neutral, rng.integers(0, cfg.preamble + 1, n_inst), 0)
        in_pre = same & (_rank(same, np.ones(len(g), dtype=bool)) <= pre[g] + 1)
        pre_len = np.round(_loguniform(rng, 1.0, MAX_LEN, len(g))).astype(np.int64)
        paylen = np.where(is_neu & in_pre, pre_len, paylen)
        is_alt = data & alternate[g]
        paylen = np.where(is_alt, _alternation(rng, n_inst, g, same, data), paylen)
        regular = (size & (rng.random(n_inst) < 0.5)) | neutral
        period = _loguniform(rng, 2_000.0, 2_000_000.0, n_inst)
        rel = np.where(neutral, rng.uniform(0.0, 0.1, n_inst), rng.uniform(0.0, 0.3, n_inst))
        reg_gap = period[g] * np.maximum(0.05, 1.0 + rel[g] * rng.normal(0.0, 1.0, len(gap)))
        gap = np.where(same & regular[g], reg_gap, gap)
        gap = np.where(in_pre, _loguniform(rng, 20.0, 2_000_000.0, len(g)), gap)
        gap = np.where(same & alternate[g], _two_levels(rng, n_inst, g, same), gap)
        changed = is_size | is_off | is_neu | is_alt
        set_length(x, order[changed], paylen[np.flatnonzero(changed)])
        label[order[(inst[order] >= 0) & (neutral | alternate)[g]]] = 0
    starts = ~same
    new_t = np.cumsum(gap)
    grp = np.cumsum(starts) - 1
    base_t = new_t[np.flatnonzero(starts)][grp]
    ts = np.empty(len(inst), dtype=np.int64)
    ts[order] = np.floor(new_t - base_t).astype(np.int64)
    pl = np.empty(len(inst), dtype=np.int64)
    pl[order] = paylen
    return side_features(inst, ts, pl), x, label
