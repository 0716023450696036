"""Fingerprint perturbation: re-draw host fingerprints in captured frames as other hosts would.

Contract: `perturb_frames(frames, ts, kinds, seed)` returns new frames in which, per host (a
source address of a connection), the selected fingerprints are re-drawn from plausible
operating-system behaviour; addresses, ports, sequence numbers, flags, payloads and timing
are untouched. Kinds:
- `window`: a per-host base receive window (common OS defaults) with per-packet variation;
- `ttl`: initial TTL 64 / 128 / 255 minus 0..24 hops (IPv6 hop limit likewise);
- `options`: the TCP option layout and MSS of another OS family (Linux, Windows, macOS,
  BSD) on SYNs, NOP-NOP-timestamps or nothing on the other segments (the TCP header length
  and IP length fields follow; payload bytes are kept);
- `ipid`: incrementing from a random base, per-packet random, or zero (IPv4);
- `tcp_ts`: TSval from a per-host clock (random base, 1 / 100 / 250 / 1000 Hz), TSecr the
  peer's last TSval.
The IPv4 header checksum is recomputed; the TCP checksum is not (the features mask it).
`suite(...)` re-extracts features from perturbed captures and reports how far the flow
figures move against the unperturbed ones.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from tidal.innet.features import _l3

KINDS = ("window", "ttl", "options", "ipid", "tcp_ts")
_WINDOWS = (65535, 64240, 29200, 14600, 8192, 16384, 42340, 65160, 26883, 5840)
_MSS = (1460, 1440, 1400, 1380, 1360, 1220, 536, 8960)
_LAYOUTS = ("linux", "windows", "macos", "bsd")


def _ip_checksum(h: bytes) -> int:
    s = sum(struct.unpack(f">{len(h) // 2}H", h))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class _Host:
    def __init__(self, rng: np.random.Generator) -> None:
        self.window = int(rng.choice(_WINDOWS))
        self.ttl = int(rng.choice((64, 128, 255))) - int(rng.integers(0, 25))
        self.layout = str(rng.choice(_LAYOUTS))
        self.mss = int(rng.choice(_MSS))
        self.wscale = int(rng.integers(0, 15))
        self.use_ts = self.layout != "windows" or bool(rng.integers(0, 2))
        self.ipid_mode = int(rng.integers(0, 3))
        self.ipid = int(rng.integers(0, 65536))
        self.ts_base = int(rng.integers(0, 2**32))
        self.ts_hz = int(rng.choice((1, 100, 250, 1000)))
        self.last_tsval = 0


def _options(h: _Host, syn: bool, tsval: int, tsecr: int) -> bytes:
    ts = struct.pack(">BBII", 8, 10, tsval, tsecr)
    mss = struct.pack(">BBH", 2, 4, h.mss)
    ws = struct.pack(">BBB", 3, 3, h.wscale)
    if syn:
        if h.layout == "linux":
            o = mss + b"\x04\x02" + (ts if h.use_ts else b"\x01\x01") + b"\x01" + ws
        elif h.layout == "windows":
            o = mss + b"\x01" + ws + b"\x01\x01\x04\x02" + (b"\x01\x01" + ts if h.use_ts else b"")
        elif h.layout == "macos":
            o = mss + b"\x01" + ws + b"\x01\x01" + ts + b"\x04\x02\x00\x00"
        else:
            o = mss + b"\x01" + ws + b"\x04\x02" + ts
    else:
        o = b"\x01\x01" + ts if h.use_ts else b""
    return o + b"\x00" * (-len(o) % 4)


def perturb_frames(
    frames: list[bytes], ts: list[int], kinds: tuple[str, ...], seed: int
) -> list[bytes]:
    """Frames with the selected fingerprints re-drawn per host (module contract)."""
    bad = set(kinds) - set(KINDS)
    if bad:
        raise ValueError(f"unknown perturbation {sorted(bad)[0]!r}; choose from {KINDS}")
    rng = np.random.default_rng(seed)
    hosts: dict[bytes, _Host] = {}
    out = []
    for fr, t in zip(frames, ts, strict=True):
        out.append(_one(fr, t, kinds, rng, hosts))
    return out


def _one(
    fr: bytes, t: int, kinds: tuple[str, ...], rng: np.random.Generator, hosts: dict[bytes, _Host]
) -> bytes:
    etype, o = _l3(fr)
    if etype == 0x0800 and len(fr) >= o + 20:
        v6, ihl = False, max(20, (fr[o] & 0x0F) * 4)
        src, dst, proto = fr[o + 12 : o + 16], fr[o + 16 : o + 20], fr[o + 9]
        frag = struct.unpack_from(">H", fr, o + 6)[0] & 0x1FFF
    elif etype == 0x86DD and len(fr) >= o + 40:
        v6, ihl, frag = True, 40, 0
        src, dst, proto = fr[o + 8 : o + 24], fr[o + 24 : o + 40], fr[o + 6]
    else:
        return fr
    h = hosts.setdefault(src, _Host(rng))
    peer = hosts.get(dst)
    b = bytearray(fr)
    if "ttl" in kinds:
        b[o + (7 if v6 else 8)] = max(1, h.ttl)
    if "ipid" in kinds and not v6:
        if h.ipid_mode == 0:
            h.ipid = (h.ipid + 1) & 0xFFFF
            val = h.ipid
        else:
            val = int(rng.integers(0, 65536)) if h.ipid_mode == 1 else 0
        b[o + 4 : o + 6] = struct.pack(">H", val)
    l4 = o + ihl
    if proto == 6 and frag == 0 and len(fr) >= l4 + 20:
        if "window" in kinds:
            w = max(0, min(65535, h.window - int(rng.integers(0, 2048))))
            b[l4 + 14 : l4 + 16] = struct.pack(">H", w)
        doff = (fr[l4 + 12] >> 4) * 4
        tsval = (h.ts_base + t * h.ts_hz // 1_000_000) & 0xFFFFFFFF
        tsecr = peer.last_tsval if peer is not None else 0
        if "options" in kinds and len(fr) >= l4 + doff:
            syn = bool(fr[l4 + 13] & 0x02)
            opts = _options(h, syn, tsval, tsecr)
            b = b[: l4 + 20] + bytearray(opts) + b[l4 + doff :]
            b[l4 + 12] = ((20 + len(opts)) // 4) << 4 | (fr[l4 + 12] & 0x0F)
            delta = len(opts) - (doff - 20)
            _fix_len(b, o, v6, delta)
        elif "tcp_ts" in kinds:
            _set_ts(b, l4, doff, tsval, tsecr)
        h.last_tsval = tsval
    if not v6:
        b[o + 10 : o + 12] = b"\x00\x00"
        b[o + 10 : o + 12] = struct.pack(">H", _ip_checksum(bytes(b[o : o + ihl])))
    return bytes(b)


def _fix_len(b: bytearray, o: int, v6: bool, delta: int) -> None:
    at = o + 4 if v6 else o + 2
    (n,) = struct.unpack_from(">H", b, at)
    b[at : at + 2] = struct.pack(">H", max(0, min(0xFFFF, n + delta)))


def _set_ts(b: bytearray, l4: int, doff: int, tsval: int, tsecr: int) -> None:
    i, end = l4 + 20, min(l4 + doff, len(b))
    while i + 1 < end:
        kind = b[i]
        if kind == 0:
            return
        if kind == 1:
            i += 1
            continue
        ln = b[i + 1]
        if ln < 2:
            return
        if kind == 8 and ln == 10 and i + 10 <= end:
            b[i + 2 : i + 10] = struct.pack(">II", tsval, tsecr)
        i += ln


def suite(
    ps: Any,
    predict: Callable[[Any], np.ndarray],
    rebuild: Callable[[Any, Callable[[list[bytes], list[int]], list[bytes]]], Any],
    score: Callable[[np.ndarray, Any], dict[str, Any]],
    seeds: tuple[int, ...] = (1, 2, 3),
) -> dict[str, Any]:
    """Recall / FPR on `ps` and on re-drawn copies (each kind alone, then all), with deltas.

    `rebuild(ps, fn)` re-extracts a packet set from `fn(frames, ts)` of each capture;
    `predict(ps)` gives verdicts; `score(pred, ps)` the flow figures.
    """
    ps = rebuild(ps, lambda fr, _ts: fr)  # the same re-extraction, nothing re-drawn
    base = score(predict(ps), ps)
    out: dict[str, Any] = {"unperturbed": _brief(base)}
    worst = 0.0
    for kinds in [(k,) for k in KINDS] + [KINDS]:
        name = "+".join(kinds) if len(kinds) == 1 else "all"
        rows = []
        for seed in seeds:

            def fn(
                fr: list[bytes], ts: list[int], kinds: tuple[str, ...] = kinds, seed: int = seed
            ) -> list[bytes]:
                return perturb_frames(fr, ts, kinds, seed)

            p2 = rebuild(ps, fn)
            rows.append(_brief(score(predict(p2), p2)))
        r = {
            key: float(np.mean([x[key] for x in rows]))
            for key in ("covert_recall", "benign_false_positive_rate")
        }
        r["recall_moved_points"] = 100 * max(
            abs(x["covert_recall"] - base["covert_recall"]) for x in rows
        )
        r["fpr_moved_points"] = 100 * max(
            abs(x["benign_false_positive_rate"] - base["benign_false_positive_rate"]) for x in rows
        )
        worst = max(worst, r["recall_moved_points"], r["fpr_moved_points"])
        out[name] = r
    out["max_moved_points"] = worst
    out["seeds"] = list(seeds)
    return out


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "covert_recall": r["covert_recall"],
        "benign_false_positive_rate": r["benign_false_positive_rate"],
        "covert_flows": r["covert_flows"],
        "benign_flows": r["benign_flows"],
    }
