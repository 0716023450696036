"""The worker IPC carries named multi-input / multi-output sets and BYTES, with no pickle:
a real worker process serving tiny ONNX models built here (tests/integration/oip_models.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import oip_models
import pytest

from tidal.core.tensors import TensorMeta
from tidal.dataplane import ipc
from tidal.dataplane.tensors import TensorSet
from tidal.dataplane.worker import WorkerError, WorkerHandle
from tidal.models.catalog import InputSpec, VariantSpec, register_variant, unregister_variant


def _spec(
    name: str, onnx_file: Path, ins: tuple[TensorMeta, ...], outs: tuple[TensorMeta, ...]
) -> VariantSpec:
    first = ins[0]
    return VariantSpec(
        name=name, task="test", family=name, accuracy=0.0, accuracy_source="none", params=0,
        input=InputSpec(first.shape[1:], first.numpy_dtype),
        label="test", builder=None, num_outputs=1, onnx_file=onnx_file, inputs=ins, outputs=outs,
    )  # fmt: skip


@pytest.fixture
def pair_worker(tmp_path: Path) -> Iterator[WorkerHandle]:
    f = tmp_path / "pair.onnx"
    oip_models.pair_model(f)
    ins = (
        TensorMeta("input_ids", "INT64", (-1, 4)),
        TensorMeta("attention_mask", "INT64", (-1, 4)),
    )
    outs = (TensorMeta("masked", "INT64", (-1, 4)), TensorMeta("scores", "FP32", (-1, 4)))
    register_variant(_spec("test-pair/1", f, ins, outs))
    w = WorkerHandle.start("test-pair/1", 1.0)
    try:
        yield w
    finally:
        w.stop()
        unregister_variant("test-pair/1")


def test_set_frames_round_trip_every_dtype() -> None:
    arrays = {
        f"t{i}": np.arange(6).astype(dt).reshape(2, 3)
        for i, dt in enumerate(["float32", "float64", "float16", "int8", "int16", "int32",
                                "int64", "uint8", "uint16", "uint32", "uint64", "bool"])
    }  # fmt: skip
    arrays["text"] = np.array([[b"a", b""], [b"\xff\x00", "h\u00e9".encode()]], dtype=object)
    frame = ipc.encode_set(ipc.REQUEST_SET, 7, arrays)
    kind, code, ndim, rid, nbytes, aux = ipc.decode_header(frame)
    assert (kind, code, ndim, rid, aux) == (ipc.REQUEST_SET, 0, 0, 7, len(arrays))
    got = ipc.decode_set(bytearray(frame[ipc.HEADER_SIZE :]), aux)
    assert list(got) == list(arrays)
    for k, a in arrays.items():
        assert got[k].dtype == a.dtype and got[k].shape == a.shape, k
        assert got[k].tolist() == a.tolist(), k
    with pytest.raises(ipc.FramingError):
        ipc.decode_set(bytearray(frame[ipc.HEADER_SIZE : -3]), aux)
    with pytest.raises(ipc.FramingError, match="announces"):
        ipc.decode_set(bytearray(frame[ipc.HEADER_SIZE :]), aux + 1)


def test_two_inputs_two_outputs_through_a_worker(pair_worker: WorkerHandle) -> None:
    ids = np.arange(8, dtype=np.int64).reshape(2, 4)
    mask = np.array([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=np.int64)
    y = pair_worker.infer(TensorSet({"input_ids": ids, "attention_mask": mask}))  # type: ignore[arg-type]
    assert isinstance(y, TensorSet) and y.names() == ["masked", "scores"]
    assert y.tensors["masked"].tolist() == (ids * mask).tolist()
    assert y.tensors["scores"].dtype == np.float32

    async def concurrent() -> list[TensorSet]:
        sets = [TensorSet({"input_ids": ids + i, "attention_mask": mask}) for i in range(5)]
        return list(await asyncio.gather(*(pair_worker.infer_async(s) for s in sets)))

    for i, r in enumerate(asyncio.run(concurrent())):
        assert r.tensors["masked"].tolist() == ((ids + i) * mask).tolist()
    # a wrong input name / dtype / shape is refused by the worker, which keeps serving
    for bad, msg in [
        ({"input_ids": ids, "mask": mask}, "do not match"),
        ({"input_ids": ids.astype(np.int32), "attention_mask": mask}, "bad dtype"),
        ({"input_ids": ids[:, :3], "attention_mask": mask[:, :3]}, "bad shape"),
    ]:
        with pytest.raises(WorkerError, match=msg):
            pair_worker.infer(TensorSet(bad))
    assert pair_worker.infer(TensorSet({"input_ids": ids, "attention_mask": mask})).tensors


def test_bytes_tensor_through_a_worker(tmp_path: Path) -> None:
    f = tmp_path / "text.onnx"
    oip_models.text_model(f)
    spec = _spec("test-text/1", f, (TensorMeta("text", "BYTES", (-1, 1)),),
                 (TensorMeta("echo", "BYTES", (-1, 1)),))  # fmt: skip
    register_variant(spec)
    w = WorkerHandle.start("test-text/1", 1.0)
    try:
        x = np.array([[b"hello"], ["w\u00f6rld".encode()]], dtype=object)
        y = w.infer(TensorSet({"text": x}))  # type: ignore[arg-type]
        got = y.tensors["echo"] if isinstance(y, TensorSet) else y
        assert [bytes(v) if not isinstance(v, bytes) else v for v in got.reshape(-1)] == [
            b"hello",
            "w\u00f6rld".encode(),
        ]
    finally:
        w.stop()
        unregister_variant("test-text/1")
