"""Scapy-generated flows, labeled synthetic wherever they are used.

Benign flows add variety on top of the real benign captures (they never replace them); covert
flows exist only for machines without the shared captures, so the pipeline still runs (every
report then says `synthetic_benign: true`). Deterministic for a given seed.

Contract: each generator yields `(name, frames, timestamps_us)` with Ethernet frames.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

Flow = tuple[str, list[bytes], list[int]]


def _tcp(src: str, dst: str, sport: int, dport: int, flags: str, payload: bytes) -> bytes:
    return bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src=src, dst=dst)
        / TCP(sport=sport, dport=dport, flags=flags)
        / payload
    )


def synthetic_benign(n_flows: int, seed: int = 0) -> Iterator[Flow]:
    """Request/response, interactive and bulk TCP flows and UDP query flows."""
    rng = np.random.default_rng(seed + 1)
    for i in range(n_flows):
        kind = ("reqresp", "interactive", "bulk", "udp")[i % 4]
        src, dst = f"10.1.{i % 250}.2", f"10.2.{i % 250}.3"
        sport, dport = int(rng.integers(1024, 65535)), int(rng.choice([80, 443, 22, 53, 8080]))
        n = int(rng.integers(8, 60))
        t, frames, ts = 1_000_000, [], []
        for k in range(n):
            if kind == "interactive":
                gap = rng.exponential(150_000)
                size = int(rng.integers(1, 80))
            elif kind == "bulk":
                gap = rng.exponential(300)
                size = 1448
            elif kind == "udp":
                gap = rng.lognormal(10, 1.5)
                size = int(rng.integers(20, 200))
            else:
                gap = rng.lognormal(9, 2)
                size = int(rng.integers(50, 1400))
            t += int(gap)
            payload = bytes(rng.integers(0, 256, size, dtype=np.uint8))
            if kind == "udp":
                frame = bytes(
                    Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload
                )
            else:
                frame = _tcp(src, dst, sport, dport, "PA" if k else "S", payload if k else b"")
            frames.append(frame)
            ts.append(t)
        yield f"synthetic/benign_{kind}_{i}", frames, ts


def synthetic_covert(n_flows: int, seed: int = 0) -> Iterator[Flow]:
    """CCEAP-like timing (40/80 ms) and storage (k x 40 ms) channels with reverse ACKs."""
    rng = np.random.default_rng(seed + 2)
    for i in range(n_flows):
        timing = i % 2 == 0
        src, dst, sport = "10.9.0.1", "10.9.0.2", 40000 + i
        t, frames, ts = 1_000_000, [], []
        for _k in range(int(rng.integers(200, 400))):
            bit = int(rng.integers(0, 2))
            gap = (40_000 if bit == 0 else 80_000) if timing else 40_000 * int(rng.integers(1, 4))
            t += gap + int(rng.normal(0, 300))
            frames.append(_tcp(src, dst, sport, 9999, "PA", b"\x01\x02\x03\x04\x05\x06\x07\x08"))
            ts.append(t)
            frames.append(_tcp(dst, src, 9999, sport, "A", b""))
            ts.append(t + 150)
        yield f"synthetic/covert_{'TCC' if timing else 'SCC'}_{i}", frames, ts
