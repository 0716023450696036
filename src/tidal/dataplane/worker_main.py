"""Entry point of a worker process: `python -m tidal.dataplane.worker_main ...` (spawned by
`WorkerHandle.start`; not a user command).

Loads one ONNX model in ONNX Runtime (intra-op threads = --threads, spin-waiting off so that
threads squeezed onto fewer cores by a resize do not burn their quota), warms it up, sends READY
(JSON with timings) on the sync socket, then serves REQUEST frames from two sockets (sync and
async) in arrival order. A wrong shape or dtype gets an ERROR frame and the worker keeps serving.
It exits on SHUTDOWN or when either socket closes (the parent is gone). Imports no torch.

A REQUEST frame feeds the model's only input (--shape/--dtype); a REQUEST_SET feeds inputs by
name, each checked against the ONNX graph (every input present, dtype, rank, fixed dimensions,
one batch size). The answer is a RESULT frame for a one-output model asked with one tensor,
else a RESULT_SET with every output by name.
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


def _session(path: str, threads: int):
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


_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(uint8)": "uint8", "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32", "tensor(uint64)": "uint64", "tensor(bool)": "bool",
    "tensor(string)": "object",
}  # fmt: skip


def _graph_inputs(sess) -> list[tuple[str, np.dtype, tuple[int | None, ...]]]:
    """(name, dtype, shape with None for dynamic dims) of every model input."""
    out = []
    for i in sess.get_inputs():
        dt = np.dtype(_ORT_TYPES.get(i.type, "float32"))
        shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in i.shape)
        out.append((i.name, dt, shape))
    return out


def _validate_set(
    tensors: dict[str, np.ndarray], graph: list[tuple[str, np.dtype, tuple[int | None, ...]]]
) -> str:
    """'' if the named tensors fit the graph's inputs, else the error naming the input."""
    names = [g[0] for g in graph]
    if sorted(tensors) != sorted(names):
        return f"inputs {sorted(tensors)} do not match the model's {names}"
    batches = set()
    for name, dt, shape in graph:
        x = tensors[name]
        if x.dtype != dt:
            return f"input {name!r}: bad dtype {x.dtype}: expected {dt}"
        ok = x.ndim == len(shape) and all(
            w is None or w == g for w, g in zip(shape, x.shape, strict=True)
        )
        if not ok:
            return f"input {name!r}: bad shape {tuple(x.shape)}: expected {shape}"
        batches.add(x.shape[0] if x.ndim else 1)
    if len(batches) > 1 or not all(1 <= b <= MAX_BATCH for b in batches):
        return f"inputs have batch sizes {sorted(batches)}: expected one in 1..{MAX_BATCH}"
    return ""


def _ort_strings(x: np.ndarray) -> np.ndarray:
    """BYTES elements as str for ONNX Runtime (its string tensors are UTF-8; it would str()
    a bytes object); UnicodeDecodeError names nothing, so the caller reports the input."""
    out = np.empty(x.shape, dtype=object)
    flat, dst = x.reshape(-1), out.reshape(-1)
    for i, v in enumerate(flat):
        dst[i] = v.decode() if isinstance(v, bytes) else v
    return out


def _sample(dt: np.dtype, shape: tuple[int | None, ...], b: int, rng) -> np.ndarray:
    full = tuple(b if i == 0 else (d or 1) for i, d in enumerate(shape)) if shape else ()
    if dt.kind == "O":
        return np.full(full, b"", dtype=object)
    if dt.kind in "iu":
        return rng.integers(1, 100, size=full).astype(dt)
    if dt.kind == "b":
        return np.ones(full, dtype=bool)
    return rng.random(full).astype(dt)


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
    graph = _graph_inputs(sess)
    in_name = graph[0][0]
    out_names = [o.name for o in sess.get_outputs()]
    t_load = time.monotonic()
    rng = np.random.default_rng(0)
    for b in (1, 1, 2, 1):
        if len(graph) == 1:
            if want_dtype.kind == "i":
                x = rng.integers(1, 100, size=(b, *want_shape)).astype(want_dtype)
            else:
                x = rng.random((b, *want_shape)).astype(want_dtype)
            feeds = {in_name: x}
        else:
            feeds = {n: _sample(dt, shape, b, rng) for n, dt, shape in graph}
        sess.run(None, feeds)
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
                kind, code, req_id, aux, shape, payload = readers[sock].read()
            except (EOFError, ConnectionError):
                return 0
            except ipc.FramingError as e:
                print(f"worker {os.getpid()}: {e}; exiting", file=sys.stderr)
                return 3
            if kind == ipc.SHUTDOWN:
                return 0
            if kind == ipc.REQUEST_SET:
                _serve_set(sock, req_id, payload, aux, graph, out_names, sess, echo, clock)
                continue
            if kind != ipc.REQUEST:
                continue
            err = _validate(code, shape, want_shape, want_code)
            if err:
                ipc.send_frame(sock, ipc.encode_bytes(ipc.ERROR, req_id, err.encode()))
                continue
            x = ipc.to_array(code, shape, payload)
            t0 = clock()
            try:
                if x.dtype.kind == "O":
                    x = _ort_strings(x)
                if echo or len(out_names) == 1:
                    y = x if echo else sess.run(None, {in_name: x})[0]
                    frame = ipc.encode_tensor(ipc.RESULT, req_id, y, clock() - t0)
                else:
                    ys = sess.run(None, {in_name: x})
                    named = dict(zip(out_names, ys, strict=True))
                    frame = [ipc.encode_set(ipc.RESULT_SET, req_id, named, clock() - t0)]
            except Exception as e:  # a model error answers this request only
                ipc.send_frame(sock, ipc.encode_bytes(ipc.ERROR, req_id, str(e).encode()))
                continue
            ipc.send_frame(sock, frame)


def _serve_set(
    sock: socket.socket,
    req_id: int,
    payload: bytearray,
    count: int,
    graph,
    out_names,
    sess,
    echo: bool,
    clock,
) -> None:
    """Answer one REQUEST_SET (named inputs) with a RESULT_SET (every output by name)."""
    try:
        tensors = ipc.decode_set(payload, count)
    except ipc.FramingError as e:
        ipc.send_frame(sock, ipc.encode_bytes(ipc.ERROR, req_id, str(e).encode()))
        return
    err = "" if echo else _validate_set(tensors, graph)
    if err:
        ipc.send_frame(sock, ipc.encode_bytes(ipc.ERROR, req_id, err.encode()))
        return
    t0 = clock()
    try:
        feeds = {k: _ort_strings(v) if v.dtype == object else v for k, v in tensors.items()}
        named = tensors if echo else dict(zip(out_names, sess.run(None, feeds), strict=True))
        frame = ipc.encode_set(ipc.RESULT_SET, req_id, named, clock() - t0)
    except Exception as e:  # a model error answers this request only
        ipc.send_frame(sock, ipc.encode_bytes(ipc.ERROR, req_id, str(e).encode()))
        return
    ipc.send_frame(sock, frame)


if __name__ == "__main__":
    sys.exit(main())
