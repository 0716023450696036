"""Per-request outcomes, aggregated in bounded memory and optionally streamed to CSV.

A sink receives batches of outcomes as parallel arrays (id, arrival_us, deadline_us, end_us,
cause, accuracy, variant) and keeps: counts by cause, a latency histogram of completed requests
(0.1 ms bins up to 120 s; exact enough for p50/p99), the accuracy sum of served requests, and
per-time-bin load / violation / latency-histogram series for the plots. With `csv_path` every
row is also appended to a CSV file; nothing per request is kept in memory.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import IO

import numpy as np
from numba import njit

from tidal.sim.config import CAUSES, LATE, OK, US

HIST_BIN_MS = 0.1
HIST_MAX_MS = 120_000.0
_NB = int(HIST_MAX_MS / HIST_BIN_MS) + 1
_LOG_EDGES = np.logspace(-1, 5.5, 66)  # ms, for the per-time-bin p99 series


@njit(cache=True)
def _aggregate(
    arr: np.ndarray,
    end: np.ndarray,
    cause: np.ndarray,
    bin_us: int,
    counts: np.ndarray,
    hist: np.ndarray,
    arrivals_t: np.ndarray,
    viol_t: np.ndarray,
    lat_t: np.ndarray,
    edges: np.ndarray,
) -> int:
    """One pass over a batch of outcomes (compiled: a pass per statistic in numpy cost as
    much as the fast simulation itself): counts by cause, the latency histogram of served
    requests, and per time bin arrivals, violations and the log-latency histogram. Returns
    the number served."""
    nb = len(arrivals_t)
    nh = len(hist)
    served = 0
    for i in range(len(arr)):
        c = cause[i]
        counts[c] += 1
        ab = min(arr[i] // bin_us, nb - 1)
        arrivals_t[ab] += 1
        if c != OK:
            viol_t[ab] += 1
        if c == OK or c == LATE:  # noqa: SIM109 (two integer compares in the compiled loop)
            served += 1
            ls = (end[i] - arr[i]) / 1000.0
            hist[min(int(ls / HIST_BIN_MS), nh - 1)] += 1
            lat_t[min(end[i] // bin_us, nb - 1), np.searchsorted(edges, ls)] += 1
    return served


class OutcomeSink:
    """Aggregates outcomes; `bin_s` is the width of the time-series bins."""

    def __init__(
        self, bin_s: float, n_bins: int, variants: list[str], csv_path: Path | None = None
    ) -> None:
        self.counts = np.zeros(len(CAUSES), dtype=np.int64)
        self.hist = np.zeros(_NB, dtype=np.int64)
        self.acc_sum = 0.0
        self.served = 0
        self.bin_us = int(bin_s * US)
        self.n_bins = n_bins
        self.arrivals_t = np.zeros(n_bins, dtype=np.int64)
        self.viol_t = np.zeros(n_bins, dtype=np.int64)
        self.lat_t = np.zeros((n_bins, len(_LOG_EDGES) + 1), dtype=np.int64)
        self.variants = variants
        self._fh: IO[str] | None = None
        self._w = None
        if csv_path is not None:
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = csv_path.open("w", newline="")
            self._w = csv.writer(self._fh)
            self._w.writerow(
                ["id", "arrival_s", "deadline_s", "end_s", "outcome", "latency_ms", "variant"]
            )

    def add(
        self,
        ids: np.ndarray,
        arr: np.ndarray,
        dl: np.ndarray,
        end: np.ndarray,
        cause: np.ndarray,
        acc: np.ndarray,
        variant: np.ndarray,
    ) -> None:
        """Add one batch of outcomes (parallel arrays of equal length)."""
        if len(ids) == 0:
            return
        cause = cause.astype(np.int64)
        served = (cause == OK) | (cause == LATE)
        self.acc_sum += float(acc[served].sum())
        self.served += _aggregate(
            np.asarray(arr, dtype=np.int64),
            np.asarray(end, dtype=np.int64),
            cause,
            self.bin_us,
            self.counts,
            self.hist,
            self.arrivals_t,
            self.viol_t,
            self.lat_t,
            _LOG_EDGES,
        )
        if self._w is not None:
            names = np.array(self.variants + [""], dtype=object)
            cn = np.array(CAUSES, dtype=object)
            lat_ms = (end - arr) / 1000.0
            rows = zip(
                ids.tolist(),
                np.round(arr / US, 6).tolist(),
                np.round(dl / US, 6).tolist(),
                np.round(end / US, 6).tolist(),
                cn[cause].tolist(),
                np.where(served, np.round(lat_ms, 3), np.nan).tolist(),
                names[variant].tolist(),
                strict=True,
            )
            self._w.writerows(rows)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    @property
    def requests(self) -> int:
        return int(self.counts.sum())

    def percentile_ms(self, q: float) -> float:
        """Latency percentile (ms) of completed requests (nan if none)."""
        total = int(self.hist.sum())
        if total == 0:
            return float("nan")
        k = int(np.searchsorted(np.cumsum(self.hist), q / 100.0 * total))
        return (k + 1) * HIST_BIN_MS

    def p99_series_ms(self) -> np.ndarray:
        """Per time bin: p99 latency (upper edge of its log bin, ms); nan where none."""
        cum = np.cumsum(self.lat_t, axis=1)
        tot = cum[:, -1]
        out = np.full(self.n_bins, np.nan)
        edges = np.append(_LOG_EDGES, _LOG_EDGES[-1] * 10)
        for i in np.nonzero(tot)[0]:
            out[i] = edges[int(np.searchsorted(cum[i], 0.99 * tot[i]))]
        return out
