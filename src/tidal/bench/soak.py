"""`tidal bench soak --minutes N`: a long mixed load at 80% of the measured capacity; prints the
gateway's RSS and open descriptors over time and the outcome counts. A benchmark, not a test.

Requests carry 1 to 1024 rows (log-uniform, so most are small and most rows are in big ones),
Poisson arrivals at `load` x the capacity in rows measured in the same run (closed loop of
1024-row requests), every answer checked by id and output against the model run locally
(`tidal.bench.overload.ModelOracle`). The load is sent in windows of `window_s` seconds so the
client's memory stays flat; after each window one line: elapsed time, RSS (MB), descriptors,
the window's outcome counts, and what is queued or running.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from tidal.bench.checked_load import Req, run_open_loop
from tidal.bench.gateway_proc import GatewayProcess
from tidal.bench.overload import FEATURES, Echo, ModelOracle, closed_loop_rows_per_s
from tidal.bench.overload import gateway_config as _config

SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class MixedOracle(ModelOracle):
    """ModelOracle with a pool of inputs of every size in SIZES."""

    def __init__(self, variant: str, seed: int = 0) -> None:
        super().__init__(variant, seed, pool=4)
        rng = np.random.default_rng(seed + 1)
        self.by_size: dict[int, list[np.ndarray]] = {}
        from tidal.bench.overload import _runner

        run = _runner(variant)
        for s in SIZES:
            xs = [rng.random((s, FEATURES), dtype=np.float32) for _ in range(4)]
            for x in xs:
                self._want[id(x)] = run(x)
            self.by_size[s] = xs


def run_soak(
    minutes: float,
    variant: str = "digits-cnn",
    cores: float = 1.0,
    load: float = 0.8,
    slo_ms: float = 1000.0,
    window_s: float = 10.0,
    echo: Echo | None = print,
) -> dict[str, Any]:
    say = echo or (lambda s: None)
    out: dict[str, Any] = {"load_avg_start": os.getloadavg(), "samples": []}
    say(f"load average at start: {out['load_avg_start']}")
    oracle = MixedOracle(variant)
    rng = np.random.default_rng(7)
    sizes = np.array(SIZES)
    mean_rows = float(np.mean(sizes))  # uniform over SIZES = log-uniform over 1..1024
    totals: Counter[str] = Counter()
    with GatewayProcess(_config(variant, 1, cores, 8), Path(tempfile.mkdtemp())) as gw:
        cap = asyncio.run(closed_loop_rows_per_s(gw.port, oracle, 4.0))
        rate = load * cap / mean_rows
        out["capacity_rows_per_s"] = round(cap, 1)
        out["rate_req_per_s"] = round(rate, 2)
        say(f"capacity {cap:.0f} rows/s; offering {rate:.1f} req/s ({load:.0%}), slo {slo_ms:g}")
        t0 = time.monotonic()
        w = 0
        while time.monotonic() - t0 < minutes * 60:
            n = max(1, int(rng.poisson(rate * window_s)))
            at = np.sort(rng.uniform(0, window_s, n))
            reqs = []
            for i in range(n):
                xs = oracle.by_size[int(rng.choice(sizes))]
                reqs.append(Req(f"w{w}-{i}", xs[int(rng.integers(len(xs)))], slo_ms, float(at[i])))
            summ = asyncio.run(run_open_loop("127.0.0.1", gw.port, "m", reqs, oracle))
            totals.update(summ.counts)
            s = gw.stats()["m"]
            sample = {
                "t_s": round(time.monotonic() - t0, 1),
                "rss_mb": round(gw.rss_mb(), 1),
                "fds": gw.open_fds(),
                "queued": s["queue_len"],
                "in_flight": s["in_flight"],
                **dict(summ.counts),
            }
            out["samples"].append(sample)
            say(str(sample))
            w += 1
    out["totals"] = dict(totals)
    out["load_avg_end"] = os.getloadavg()
    say(f"totals: {dict(totals)}")
    say(f"load average at end: {out['load_avg_end']}")
    return out


__all__ = ["run_soak"]
