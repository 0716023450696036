"""Benchmarks of the worker (print figures; never asserted by tests).

- `bench_resize`: one live worker resized in place through a sequence of core counts; at each
  size: apply time, request -> end of the first batch, p50/p99 batch latency, PID (unchanged).
- `bench_ipc`: no-op round trips (sync, async sequential, async concurrent over several workers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from tidal.core.clock import Clock, MonotonicClock
from tidal.models.catalog import get_variant


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(xs), q)), 3)


def bench_resize(
    variant: str = "resnet18",
    sizes: Sequence[float] = (1.0, 0.5, 2.0),
    batch: int = 1,
    samples: int = 30,
    cpu_weight: int | None = None,
    clock: Clock | None = None,
) -> dict[str, Any]:
    """Latency of `variant` at each core count of `sizes`, in ONE worker resized in place."""
    from tidal.dataplane.worker import WorkerHandle

    clk = clock or MonotonicClock()
    x = get_variant(variant).input.sample(batch)
    w = WorkerHandle.start(variant, sizes[0], clock=clk, cpu_weight=cpu_weight)
    out: dict[str, Any] = {
        "variant": variant,
        "batch": batch,
        "mechanism": w.mechanism,
        "cold_start_s": round(w.cold_start_s, 3),
        "sizes": [],
    }
    try:
        pid = w.pid
        for i, cores in enumerate(sizes):
            apply_s = w.resize(cores) if i else 0.0
            t0 = clk.now()
            w.infer(x)  # the first batch at the new size
            first_ms = (clk.now() - t0) * 1000
            to_batch = w.last_resize_to_batch_s if i else None
            lat = []
            for _ in range(samples):
                t0 = clk.now()
                w.infer(x)
                lat.append((clk.now() - t0) * 1000)
            st = w.cpu_state()
            out["sizes"].append(
                {
                    "cores": cores,
                    "pid_unchanged": w.pid == pid,
                    "quota_cores_read_back": st.quota_cores,
                    "cpus_read_back": list(st.cpus),
                    "resize_apply_ms": round(apply_s * 1000, 3),
                    "resize_request_to_first_batch_end_ms": (
                        round(to_batch * 1000, 3) if to_batch is not None else None
                    ),
                    "first_batch_ms": round(first_ms, 3),
                    "p50_ms": _pct(lat, 50),
                    "p99_ms": _pct(lat, 99),
                    "samples": samples,
                }
            )
    finally:
        w.stop()
    by = {s["cores"]: s["p50_ms"] for s in out["sizes"]}
    if min(by) != max(by):
        out["p50_ratio_min_cores_over_max_cores"] = round(by[min(by)] / by[max(by)], 2)
    return out


def bench_ipc(workers: int = 4, calls: int = 2000, cpu_weight: int | None = None) -> dict[str, Any]:
    """No-op round trips: one worker sync and async, then `workers` workers concurrently.

    With `cpu_weight` (shared machines) the workers get that CPU weight and this process nice
    -10 when permitted, so other jobs disturb the measurement less."""
    import contextlib
    import os

    from tidal.dataplane.worker import WorkerHandle

    if cpu_weight is not None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, -10)
    clk = MonotonicClock()
    ws = [WorkerHandle.start("noop", 1.0, cpu_weight=cpu_weight) for _ in range(workers)]
    try:
        x = np.zeros((1, 64), np.float32)
        w = ws[0]
        for _ in range(100):
            w.infer(x)
        t0 = clk.now()
        for _ in range(calls):
            w.infer(x)
        sync_us = (clk.now() - t0) / calls * 1e6

        async def run() -> tuple[float, float, list[float]]:
            for _ in range(100):
                await w.infer_async(x)
            lat = []
            t0 = clk.now()
            for _ in range(calls):
                t1 = clk.now()
                await w.infer_async(x)
                lat.append((clk.now() - t1) * 1e6)
            seq = (clk.now() - t0) / calls * 1e6
            t0 = clk.now()
            await asyncio.gather(*(ws[i % workers].infer_async(x) for i in range(calls)))
            conc = (clk.now() - t0) / calls * 1e6
            return seq, conc, lat

        seq_us, conc_us, lat = asyncio.run(run())
    finally:
        for w in ws:
            w.stop()
    return {
        "noop_sync_round_trip_us": round(sync_us, 1),
        "noop_async_round_trip_us_mean": round(seq_us, 1),
        "noop_async_round_trip_us_p50": _pct(lat, 50),
        "noop_async_round_trip_us_p99": _pct(lat, 99),
        f"noop_async_concurrent_{workers}_workers_us_per_call": round(conc_us, 1),
        "calls": calls,
    }
