"""Batch latency of a Tidal worker process vs plain ONNX Runtime in this process (same ONNX
file, same thread count), interleaved, to separate serving-path effects from model speed.

    python benchmarks/bench_dataplane_worker_vs_ort.py [--variant resnet18] [--batch 8] [--cores 2]

Prints JSON: median ms per batch for each, over `--reps` interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import onnxruntime as ort

from tidal.dataplane.worker import WorkerHandle
from tidal.models.catalog import get_variant
from tidal.models.onnx_cache import onnx_path

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="resnet18")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--cores", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=6)
    a = ap.parse_args()
    x = get_variant(a.variant).input.sample(a.batch)
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(round(a.cores)))
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(onnx_path(a.variant)), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    h = WorkerHandle.start(a.variant, a.cores)
    w, o = [], []
    try:
        h.infer(x)
        sess.run(None, {name: x})
        for _ in range(a.reps):
            t = time.perf_counter()
            h.infer(x)
            w.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            sess.run(None, {name: x})
            o.append((time.perf_counter() - t) * 1e3)
    finally:
        h.stop()
    print(
        json.dumps(
            {
                "variant": a.variant,
                "batch": a.batch,
                "cores": a.cores,
                "mechanism": h.mechanism,
                "worker_ms_median": round(statistics.median(w), 1),
                "plain_ort_ms_median": round(statistics.median(o), 1),
            }
        )
    )
