"""A seeded generator of credit-card transactions (the CEP workload).

Records use `TXN_DTYPE`: seq (0..n-1), card, ts (seconds, non-decreasing, Poisson arrivals
at `rate` per second), amount (log-normal around ~40), merchant, flag (0). A fraction
`fraud_rate` of cards gets a planted pattern: a small purchase (< 5) followed by a large one
(> 500) a few minutes later. Same seed, same transactions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tidal.cep.codec import TXN_DTYPE
from tidal.core.errors import TidalError

SMALL = 5.0
LARGE = 500.0


def transactions(
    n: int,
    seed: int = 0,
    cards: int = 1000,
    rate: float = 1000.0,
    fraud_rate: float = 0.01,
) -> np.ndarray:
    """`n` transactions as a structured array (see module docstring)."""
    if n < 0:
        raise TidalError(f"n must be >= 0, got {n}")
    if cards < 1:
        raise TidalError(f"cards must be >= 1, got {cards}")
    if rate <= 0:
        raise TidalError(f"rate must be > 0, got {rate}")
    rng = np.random.default_rng(seed)
    out = np.zeros(n, dtype=TXN_DTYPE)
    out["seq"] = np.arange(n)
    out["card"] = rng.integers(0, cards, size=n)
    out["ts"] = np.cumsum(rng.exponential(1.0 / rate, size=n))
    amt = np.round(rng.lognormal(mean=3.2, sigma=0.9, size=n), 2)
    out["amount"] = np.clip(amt, SMALL, LARGE)  # normal traffic: neither small nor large
    out["merchant"] = rng.integers(0, 500, size=n)
    # Planted frauds: pick positions i < j with the same card, small at i, large at j.
    k = int(n * fraud_rate)
    if k and n > 2:
        firsts = rng.integers(0, max(1, n - 2), size=k)
        for i in firsts:
            j = int(np.searchsorted(out["ts"], out["ts"][i] + rng.uniform(10, 300)))
            if j >= n or j <= i:
                continue
            out["card"][j] = out["card"][i]
            out["amount"][i] = round(float(rng.uniform(0.5, 4.99)), 2)
            out["amount"][j] = round(float(rng.uniform(600, 3000)), 2)
    return out


def as_dicts(arr: np.ndarray, type_name: str = "txn") -> list[dict[str, Any]]:
    """The records as dict events with a `type` field (for the SASE engine)."""
    names = arr.dtype.names or ()
    evs = [dict(zip(names, row.tolist(), strict=True)) for row in arr]
    for e in evs:
        e["type"] = type_name
    return evs


def checksum(arr: np.ndarray) -> int:
    """Order-independent checksum of (seq, card) pairs: detects loss and duplication."""
    if len(arr) == 0:
        return 0
    h = (arr["seq"].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ arr["card"].astype(
        np.uint64
    )
    return int(np.bitwise_xor.reduce(h) ^ np.uint64(len(arr)))
