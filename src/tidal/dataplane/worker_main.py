"""Entry point of a worker process: `python -m tidal.dataplane.worker_main ...` (spawned by
`WorkerHandle.start`; not a user command).

Loads one ONNX model in ONNX Runtime (intra-op threads = --threads, spin-waiting off so that
threads squeezed onto fewer cores by a resize do not burn their quota), warms it up, sends READY
(JSON with timings) on the sync socket, then serves REQUEST frames from two sockets (sync and
async) in arrival order. A wrong shape or dtype gets an ERROR frame and the worker keeps serving.
It exits on SHUTDOWN or when either socket closes (the parent is gone). Imports no torch.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sys
import time

T_START = time.monotonic()

import numpy as np  # noqa: E402

from tidal.dataplane import ipc  # noqa: E402

MAX_BATCH = 1 << 16


def _session(path: str, threads: int):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _validate(
    code: int, shape: tuple[int, ...], want_shape: tuple[int, ...], want_code: int
) -> str:
    """'' if the batch is acceptable, else the error message naming the bad value."""
    if code != want_code:
        got = ipc.CODE_DTYPES.get(code, f"code {code}")
        return f"bad dtype {got}: expected {ipc.CODE_DTYPES[want_code]}"
    if len(shape) != len(want_shape) + 1 or tuple(shape[1:]) != want_shape:
        return f"bad shape {tuple(shape)}: expected (batch, {', '.join(map(str, want_shape))})"
    if not 1 <= shape[0] <= MAX_BATCH:
        return f"bad batch size {shape[0]}: expected 1..{MAX_BATCH}"
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--shape", required=True, help="JSON list: input shape without batch")
    ap.add_argument("--dtype", required=True)
    ap.add_argument("--sync-fd", type=int, required=True)
    ap.add_argument("--async-fd", type=int, required=True)
    ap.add_argument("--echo", action="store_true", help="identity without ORT (noop variant)")
    args = ap.parse_args(argv)
    sync = socket.socket(fileno=args.sync_fd)
    asock = socket.socket(fileno=args.async_fd)
    sync.setblocking(True)
    asock.setblocking(True)
    want_shape = tuple(json.loads(args.shape))
    want_dtype = np.dtype(args.dtype)
    want_code = ipc.dtype_code(want_dtype)

    echo = bool(args.echo)
    t_import = time.monotonic()
    sess = _session(args.onnx, args.threads)
    in_name = sess.get_inputs()[0].name
    t_load = time.monotonic()
    rng = np.random.default_rng(0)
    for b in (1, 1, 2, 1):
        if want_dtype.kind == "i":
            x = rng.integers(1, 100, size=(b, *want_shape)).astype(want_dtype)
        else:
            x = rng.random((b, *want_shape)).astype(want_dtype)
        sess.run(None, {in_name: x})
    t_warm = time.monotonic()
    ready = {
        "pid": os.getpid(),
        "t_start": T_START,
        "import_s": t_import - T_START,
        "load_s": t_load - t_import,
        "warmup_s": t_warm - t_load,
        "t_ready": t_warm,
    }
    ipc.send_frame(sync, ipc.encode_bytes(ipc.READY, 0, json.dumps(ready).encode()))

    readers = {sync: ipc.FrameReader(sync), asock: ipc.FrameReader(asock)}
    sel = selectors.DefaultSelector()
    sel.register(sync, selectors.EVENT_READ, sync)
    sel.register(asock, selectors.EVENT_READ, asock)
    clock = time.perf_counter_ns
    while True:
        # Frames already buffered first (a recv may have pulled in several), then select.
        todo: list[socket.socket] = [s for s, r in readers.items() if r.buffered()]
        if not todo:
            todo = [key.data for key, _ in sel.select()]
        for sock in todo:
            try:
                kind, code, req_id, _aux, shape, payload = readers[sock].read()
            except (EOFError, ConnectionError):
                return 0
            except ipc.FramingError as e:
                print(f"worker {os.getpid()}: {e}; exiting", file=sys.stderr)
                return 3
            if kind == ipc.SHUTDOWN:
                return 0
            if kind != ipc.REQUEST:
                continue
            err = _validate(code, shape, want_shape, want_code)
            if err:
                ipc.send_frame(sock, ipc.encode_bytes(ipc.ERROR, req_id, err.encode()))
                continue
            x = ipc.to_array(code, shape, payload)
            t0 = clock()
            try:
                y = x if echo else sess.run(None, {in_name: x})[0]
            except Exception as e:  # a model error answers this request only
                ipc.send_frame(sock, ipc.encode_bytes(ipc.ERROR, req_id, str(e).encode()))
                continue
            ipc.send_frame(sock, ipc.encode_tensor(ipc.RESULT, req_id, y, clock() - t0))


if __name__ == "__main__":
    sys.exit(main())
