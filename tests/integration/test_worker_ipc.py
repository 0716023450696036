"""Worker IPC: bad batches rejected while serving on, async fan-in, death detection."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import numpy as np
import pytest

from tidal.dataplane.worker import WorkerDied, WorkerError, WorkerHandle


@pytest.fixture
def noop():
    w = WorkerHandle.start("noop", 1.0)
    yield w
    w.stop()


def test_wrong_shape_or_dtype_is_rejected_and_worker_keeps_serving(noop: WorkerHandle) -> None:
    good = np.arange(128, dtype=np.float32).reshape(2, 64)
    with pytest.raises(WorkerError, match=r"bad shape \(2, 3\)"):
        noop.infer(np.zeros((2, 3), np.float32))
    with pytest.raises(WorkerError, match="bad dtype float64"):
        noop.infer(np.zeros((2, 64), np.float64))
    with pytest.raises(WorkerError, match="bad shape"):
        noop.infer(np.zeros((64,), np.float32))  # missing batch dimension
    with pytest.raises(WorkerError, match="cannot be sent"):
        noop.infer(np.zeros((2, 64), np.complex64))
    np.testing.assert_array_equal(noop.infer(good), good)
    assert noop.alive()


def test_async_calls_from_one_loop_to_two_workers(noop: WorkerHandle) -> None:
    other = WorkerHandle.start("digits-linear", 1.0)
    try:
        sync_ref = other.infer(np.full((3, 64), 0.5, np.float32))

        async def main() -> None:
            xs = [np.full((1 + i % 3, 64), i, np.float32) for i in range(200)]
            outs = await asyncio.gather(*(noop.infer_async(x) for x in xs))
            for x, y in zip(xs, outs, strict=True):
                np.testing.assert_array_equal(x, y)  # every reply matched to its request
            y2 = await other.infer_async(np.full((3, 64), 0.5, np.float32))
            np.testing.assert_allclose(y2, sync_ref, rtol=1e-6)
            with pytest.raises(WorkerError, match="bad shape"):
                await noop.infer_async(np.zeros((1, 5), np.float32))
            big = np.random.default_rng(0).random((5000, 64), dtype=np.float32)  # > socket buf
            np.testing.assert_array_equal(await noop.infer_async(big), big)

        asyncio.run(main())
        asyncio.run(main())  # a second event loop re-binds cleanly
    finally:
        other.stop()


def test_sigkill_mid_batch_fails_pending_calls_promptly() -> None:
    w = WorkerHandle.start("digits-cnn", 0.5)
    x = np.random.default_rng(0).random((20000, 64), dtype=np.float32)  # a slow batch
    errors: list[BaseException] = []

    def blocking_call() -> None:
        try:
            w.infer(x)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    async def main() -> list[BaseException | np.ndarray]:
        calls = [asyncio.ensure_future(w.infer_async(x)) for _ in range(3)]
        await asyncio.sleep(0.2)
        os.kill(w.pid, signal.SIGKILL)
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)

    t = threading.Thread(target=blocking_call)
    t.start()
    results = asyncio.run(main())
    t.join(timeout=10)
    assert not t.is_alive()
    assert errors and isinstance(errors[0], WorkerDied)
    assert all(isinstance(r, WorkerDied) for r in results)
    assert not w.alive()
    with pytest.raises(WorkerDied):
        w.infer(np.zeros((1, 64), np.float32))
    with pytest.raises(WorkerDied):
        w.resize(1.0)
    w.stop()
    assert w._cpu.cgroup is None


def test_cold_start_is_reported(noop: WorkerHandle) -> None:
    b = noop.cold_start_breakdown
    assert noop.cold_start_s > 0
    assert set(b) == {"spawn_s", "import_s", "load_s", "warmup_s", "total_s"}
    assert b["import_s"] + b["load_s"] + b["warmup_s"] <= noop.cold_start_s + 1e-6
    assert noop.input_shape == (64,) and noop.input_dtype == np.float32


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "int32", "uint8", "bool"])
def test_framing_round_trip(dtype: str) -> None:
    import socket

    from tidal.dataplane import ipc

    a, b = socket.socketpair()
    try:
        arr = (np.arange(2 * 3 * 5) % 7).astype(dtype).reshape(2, 3, 5)
        big = np.ones((300, 1000), dtype)  # > 64 KiB: header and data sent separately
        for x, rid in ((arr, 7), (big, 8)):
            frame = ipc.encode_tensor(ipc.REQUEST, rid, x, aux=42)
            sender = threading.Thread(target=ipc.send_frame, args=(a, frame))
            sender.start()  # the big frame exceeds the socket buffer: send while reading
            kind, code, req_id, aux, shape, payload = ipc.FrameReader(b).read()
            sender.join(timeout=10)
            assert (kind, req_id, aux, shape) == (ipc.REQUEST, rid, 42, x.shape)
            np.testing.assert_array_equal(ipc.to_array(code, shape, payload), x)
        a.sendall(b"\x00" * ipc.HEADER_SIZE)
        with pytest.raises(ipc.FramingError, match="bad frame header"):
            ipc.FrameReader(b).read()
    finally:
        a.close()
        b.close()


def test_digits_worker_gives_real_predictions() -> None:
    from tidal.models.digits_data import heldout_batch

    x, y = heldout_batch(200)
    w = WorkerHandle.start("digits-cnn", 1.0)
    try:
        pred = w.infer(x).argmax(1)
    finally:
        w.stop()
    assert (pred == y).mean() > 0.95  # ONNX Runtime in the worker = the trained model
