"""Workloads: the Twitter trace and its named windows, synthetic shapes, Poisson arrivals,
per-request dynamic SLOs (LTE log). Pure numpy; reads ../shared in place.

Simple API for the simulator, the load generator and the demo::

    rates = load_trace("twitter:bursty")          # requests per second
    t = arrivals(rates, seed=1)                    # sorted arrival times (s)
    budgets = dynamic_slos(t, slo_ms=1000, seed=1) # per-request budgets (ms)
"""

from __future__ import annotations

import numpy as np

from tidal.core.errors import TidalError
from tidal.workload.arrivals import arrival_chunks, arrivals, to_us
from tidal.workload.filetrace import file_rates, scale_to_peak
from tidal.workload.slo import dynamic_slos
from tidal.workload.synthetic import SHAPES, synthetic_rates
from tidal.workload.twitter import WINDOWS, twitter_rates

__all__ = [
    "SHAPES",
    "WINDOWS",
    "arrival_chunks",
    "arrivals",
    "dynamic_slos",
    "load_trace",
    "synthetic_rates",
    "to_us",
    "trace_names",
]


def trace_names() -> list[str]:
    """Every named trace spec."""
    return (
        [f"twitter:{w}" for w in WINDOWS]
        + ["twitter:START-END"]
        + [f"synthetic:{s}" for s in SHAPES]
        + ["file:PATH[,compress=K][,scale_to_peak=R]"]
    )


def compress_rates(rates: np.ndarray, compress: int) -> np.ndarray:
    """Play the trace `compress` times faster: every request kept, seconds merged k by k
    (the last partial group is summed as it is)."""
    if compress < 1:
        raise TidalError(f"compress must be an integer >= 1, got {compress}")
    if compress == 1:
        return rates
    n = -(-len(rates) // compress) * compress
    padded = np.zeros(n)
    padded[: len(rates)] = rates
    return padded.reshape(-1, compress).sum(axis=1)


def load_trace(
    spec: str,
    damping: int | None = None,
    compress: int = 1,
    seed: int = 0,
    peak: float | None = None,
) -> np.ndarray:
    """Requests per second for `spec`:

    - ``twitter:NAME`` (bursty, steady-low, steady-high, fluctuating, infadapter, sponge) or
      ``twitter:START-END``; `damping` None = the paper's (8 for IPA's windows, else 1);
    - ``synthetic:SHAPE[:DURATION_S[:LOW:HIGH]]`` with SHAPE in step, spike, ramp, diurnal,
      constant (seeded Poisson noise per second);
    - ``file:PATH[,compress=K][,scale_to_peak=R][,format=rates|timestamps][,unit=s|ms]``: one
      rate per line or one arrival timestamp per line (`tidal.workload.filetrace`).

    Then `compress` (k seconds merged into one: k times faster, every request kept) and
    `peak` (scale so the busiest second has `peak` req/s), as ``--compress`` and
    ``--scale-to-peak`` do; the spec's own options apply first.

    Raises TidalError naming the bad spec, an out-of-range window or a missing trace file.
    """
    kind, _, rest = spec.partition(":")
    if kind == "twitter":
        rates = twitter_rates(rest, damping)
    elif kind == "synthetic":
        parts = rest.split(":")
        try:
            dur = int(parts[1]) if len(parts) > 1 else 600
            low = float(parts[2]) if len(parts) > 2 else 20.0
            high = float(parts[3]) if len(parts) > 3 else 100.0
        except ValueError:
            raise TidalError(
                f"bad synthetic trace {spec!r}; expected synthetic:SHAPE[:DURATION_S[:LOW:HIGH]]"
            ) from None
        rates = synthetic_rates(parts[0], dur, low, high, seed)
        if damping is not None:
            rates = np.floor(rates / damping)
    elif kind == "file":
        rates, k, p = file_rates(rest)
        rates = compress_rates(rates, k)
        if p is not None:
            rates = scale_to_peak(rates, p)
        if damping is not None:
            rates = np.floor(rates / damping)
    else:
        raise TidalError(f"unknown trace {spec!r}; valid: {', '.join(trace_names())}")
    rates = compress_rates(rates, compress)
    return rates if peak is None else scale_to_peak(rates, peak)
