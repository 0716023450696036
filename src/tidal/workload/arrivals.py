"""Request arrival times from per-second rates: Poisson arrivals within each second.

Each second i contributes ``n_i`` requests: the trace's count when the rates are integers (so a
replay sends exactly the trace's requests), else a Poisson draw of mean ``rates[i]``. Given the
count, the times are uniform in [i, i+1): a Poisson process conditioned on its count. Generated
in bulk with numpy, in chunks of seconds (each chunk seeded from (seed, chunk index)) so a
22-day replay streams in bounded memory and any chunking gives the same times.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

CHUNK_S = 3600


def _counts(rates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if np.all(rates == np.floor(rates)):
        return rates.astype(np.int64)
    return rng.poisson(rates).astype(np.int64)


def arrival_chunks(
    rates: np.ndarray, seed: int = 0, chunk_s: int = CHUNK_S
) -> Iterator[np.ndarray]:
    """Yield sorted arrival times (float64 seconds) chunk by chunk of `CHUNK_S` trace seconds.

    `chunk_s` only changes how many chunks are fused per yield (a multiple of CHUNK_S keeps the
    times identical to `arrivals`)."""
    rates = np.asarray(rates, dtype=np.float64)
    if np.any(rates < 0):
        raise ValueError("rates must be >= 0")
    per_yield = max(1, chunk_s // CHUNK_S)
    buf: list[np.ndarray] = []
    for k, start in enumerate(range(0, len(rates), CHUNK_S)):
        rng = np.random.default_rng([seed, k])
        part = rates[start : start + CHUNK_S]
        counts = _counts(part, rng)
        sec = np.repeat(np.arange(start, start + len(part), dtype=np.float64), counts)
        times = np.sort(sec + rng.random(len(sec)))
        buf.append(times)
        if len(buf) >= per_yield:
            yield np.concatenate(buf)
            buf = []
    if buf:
        yield np.concatenate(buf)


def arrivals(rates: np.ndarray, seed: int = 0) -> np.ndarray:
    """All arrival times (float64 seconds, sorted) for `rates` requests per second."""
    chunks = list(arrival_chunks(rates, seed))
    return np.concatenate(chunks) if chunks else np.zeros(0)


def to_us(times_s: np.ndarray) -> np.ndarray:
    """Seconds -> integer microseconds (int64), the fast simulator's time unit."""
    return np.floor(np.asarray(times_s) * 1e6).astype(np.int64)
