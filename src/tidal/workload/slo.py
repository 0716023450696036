"""Per-request dynamic SLOs from the LTE bandwidth log, as Sponge does.

Sponge (load_tester ``barazmoon/slas/loader.py``): ``bandwidth = int(col5 / col6)`` bytes/ms,
``comm_ms = image_bytes / bandwidth``, ``slo_i = int(SLO - comm_ms)``; the per-second series is
repeated cyclically over the workload. A request arriving in second t uses row ``t mod rows``.
Image sizes are 100/200/500 KB (1 KB = 1000 bytes); by default each request draws one of them
uniformly with the seed; pass `image_kb` to fix it. Budgets are clamped at 0 ms (a request
whose transfer alone exceeds the SLO arrives already late).
"""

from __future__ import annotations

import numpy as np

from tidal.core.errors import TidalError
from tidal.core.shared import shared_path

LTE_FILE = ("traces", "lte_bandwidth_report_bus_0001.log")
IMAGE_KB = (100, 200, 500)


def lte_bandwidth() -> np.ndarray:
    """Bandwidth in bytes/ms per row of the LTE log (int, as Sponge computes it)."""
    p = shared_path(*LTE_FILE)
    if p is None:
        raise TidalError(
            "LTE bandwidth log not found: expected ../shared/traces/lte_bandwidth_report_bus_0001"
            ".log; run without dynamic SLOs (a fixed --slo-ms) instead"
        )
    rows = np.loadtxt(p, dtype=np.float64, ndmin=2)
    bw = (rows[:, 4] / rows[:, 5]).astype(np.int64)
    return np.maximum(bw, 1)  # a zero-byte row would divide by zero: 1 byte/ms floor


def dynamic_slos(
    arrival_s: np.ndarray, slo_ms: float = 1000.0, seed: int = 0, image_kb: int | None = None
) -> np.ndarray:
    """Remaining budget in ms (float64) of each request arriving at `arrival_s` seconds."""
    if slo_ms <= 0:
        raise TidalError(f"slo_ms must be > 0, got {slo_ms}")
    bw = lte_bandwidth()
    t = np.asarray(arrival_s, dtype=np.float64)
    idx = np.floor(t).astype(np.int64) % len(bw)
    if image_kb is None:
        rng = np.random.default_rng([seed, 7])
        sizes = np.asarray(IMAGE_KB, dtype=np.float64)[rng.integers(0, len(IMAGE_KB), len(t))]
    else:
        sizes = np.full(len(t), float(image_kb))
    comm_ms = sizes * 1000.0 / bw[idx]
    return np.maximum(0.0, np.floor(slo_ms - comm_ms))
