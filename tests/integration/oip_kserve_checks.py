"""KServe SDK clients (InferenceRESTClient v2, InferenceGRPCClient) against a running Tidal.

Run as a script by test_oip_kserve_client.py, in its own process: the kserve and
tritonclient.grpc packages register the same protobuf names and cannot share a process.
Usage: python oip_kserve_checks.py HTTP_BASE_URL GRPC_HOST:PORT. Prints one line per check and
`N passed, M failed`; exits non-zero when any check failed.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import Awaitable, Callable

import httpx
import numpy as np
from kserve import (
    InferenceGRPCClient,
    InferenceRESTClient,
    InferInput,
    InferRequest,
    RESTConfig,
)
from kserve.protocol.infer_type import RequestedOutput

IDS = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.int64)
MASK = np.array([[1, 1, 0, 1], [0, 1, 1, 1]], dtype=np.int64)
X = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]], dtype=np.float32)
W2 = -np.arange(12, dtype=np.float32).reshape(4, 3)


def _pair(binary: bool) -> list[InferInput]:
    a = InferInput("input_ids", list(IDS.shape), "INT64")
    b = InferInput("attention_mask", list(MASK.shape), "INT64")
    a.set_data_from_numpy(IDS, binary_data=binary)
    b.set_data_from_numpy(MASK, binary_data=binary)
    return [a, b]


async def rest_checks(base: str) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))

    async def health() -> None:
        assert await client.is_server_live(base)
        assert await client.is_server_ready(base)
        assert await client.is_model_ready(base, "pair")

    async def json_two_inputs() -> None:
        req = InferRequest("pair", _pair(False))
        res = await client.infer(base, req, model_name="pair")
        got = {o.name: o.as_numpy() for o in res.outputs}
        assert got["masked"].tolist() == (IDS * MASK).tolist(), got
        assert got["scores"].dtype == np.float32

    async def binary_inputs_and_outputs() -> None:
        outs = [RequestedOutput("scores", parameters={"binary_data": True})]
        req = InferRequest("pair", _pair(True), request_outputs=outs)
        res = await client.infer(base, req, model_name="pair")
        assert [o.name for o in res.outputs] == ["scores"]
        assert res.outputs[0].as_numpy().tolist() == (IDS * MASK).astype(np.float32).tolist()

    async def bytes_tensor() -> None:
        t = InferInput("text", [2, 1], "BYTES")
        t.set_data_from_numpy(np.array([[b"abc"], [b"de"]], dtype=object), binary_data=True)
        res = await client.infer(base, InferRequest("text", [t]), model_name="text")
        vals = [v if isinstance(v, bytes) else str(v).encode() for v in res.outputs[0].data]
        assert vals == [b"abc", b"de"], vals

    async def class_count() -> None:
        x = InferInput("x", [2, 4], "FP32")
        x.set_data_from_numpy(X, binary_data=False)
        outs = [RequestedOutput("probs", parameters={"classification": 1})]
        res = await client.infer(base, InferRequest("clf", [x], request_outputs=outs),
                                 model_name="clf")  # fmt: skip
        assert res.outputs[0].datatype == "BYTES"
        assert [str(v) for v in res.outputs[0].data] == ["2.000000:2", "11.000000:2"]

    async def pinned_and_unknown_version() -> None:
        x = InferInput("x", [2, 4], "FP32")
        x.set_data_from_numpy(X, binary_data=False)
        url = f"{base}/v2/models/clf/versions/2/infer"
        res = await client.infer(url, InferRequest("clf", [x]), is_graph_endpoint=True)
        assert res["model_version"] == "2"
        assert res["outputs"][0]["data"] == (X @ W2).reshape(-1).tolist()
        try:
            await client.infer(f"{base}/v2/models/clf/versions/nope/infer",
                               InferRequest("clf", [x]), is_graph_endpoint=True)  # fmt: skip
        except httpx.HTTPStatusError as e:
            assert e.response.status_code == 404 and "unknown version" in e.response.text
        else:
            raise AssertionError("unknown version answered")

    async def bad_input_400() -> None:
        x = InferInput("nope", [1, 4], "FP32")
        x.set_data_from_numpy(X[:1], binary_data=False)
        try:
            await client.infer(base, InferRequest("clf", [x]), model_name="clf")
        except httpx.HTTPStatusError as e:
            assert e.response.status_code == 400 and "unknown input 'nope'" in e.response.text
        else:
            raise AssertionError("unknown input answered")

    return [
        ("rest health", health),
        ("rest json two inputs", json_two_inputs),
        ("rest binary inputs + requested binary output", binary_inputs_and_outputs),
        ("rest BYTES", bytes_tensor),
        ("rest classification", class_count),
        ("rest pinned + unknown version", pinned_and_unknown_version),
        ("rest unknown input 400", bad_input_400),
    ]


async def grpc_checks(target: str) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    client = InferenceGRPCClient(target, timeout=60, retries=0)

    async def health() -> None:
        assert await client.is_server_live()
        assert await client.is_server_ready()
        assert await client.is_model_ready("clf")

    async def two_inputs_raw() -> None:
        req = InferRequest("pair", _pair(True))
        res = await client.infer(req)
        got = {o.name: o.as_numpy() for o in res.outputs}
        assert got["masked"].tolist() == (IDS * MASK).tolist(), got

    async def pinned_version() -> None:
        x = InferInput("x", [2, 4], "FP32")
        x.set_data_from_numpy(X, binary_data=True)
        res = await client.infer(InferRequest("clf", [x], model_version="2"))
        assert res.outputs[0].as_numpy().tolist() == (X @ W2).tolist()
        assert res.model_version == "2"

    async def typed_contents() -> None:
        x = InferInput("x", [2, 4], "FP32")
        x.set_data_from_numpy(X, binary_data=False)  # InferTensorContents.fp32_contents
        ids = InferInput("input_ids", list(IDS.shape), "INT64")
        ids.set_data_from_numpy(IDS, binary_data=False)
        mask = InferInput("attention_mask", list(MASK.shape), "INT64")
        mask.set_data_from_numpy(MASK, binary_data=False)
        res = await client.infer(InferRequest("clf", [x], model_version="2"))
        assert res.outputs[0].as_numpy().tolist() == (X @ W2).tolist()
        res = await client.infer(InferRequest("pair", [ids, mask]))
        got = {o.name: o.as_numpy() for o in res.outputs}
        assert got["masked"].tolist() == (IDS * MASK).tolist(), got

    async def unknown_version_not_found() -> None:
        import grpc

        x = InferInput("x", [2, 4], "FP32")
        x.set_data_from_numpy(X, binary_data=True)
        try:
            await client.infer(InferRequest("clf", [x], model_version="nope"))
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND and "unknown version" in str(e.details())
        else:
            raise AssertionError("unknown version answered")

    async def deadline() -> None:
        import grpc

        x = InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(X[:1], binary_data=True)
        try:
            await client.infer(InferRequest("clf", [x]), timeout=0.05)
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
        else:
            raise AssertionError("a 50 ms deadline the estimate cannot meet was answered")

    return [
        ("grpc health", health),
        ("grpc two inputs (raw contents)", two_inputs_raw),
        ("grpc pinned version", pinned_version),
        ("grpc typed contents (fp32, int64)", typed_contents),
        ("grpc unknown version NOT_FOUND", unknown_version_not_found),
        ("grpc deadline", deadline),
    ]


async def main(base: str, target: str) -> int:
    checks = await rest_checks(base) + await grpc_checks(target)
    passed = failed = 0
    for name, fn in checks:
        try:
            await fn()
        except Exception:
            failed += 1
            print(f"FAIL {name}: {traceback.format_exc(limit=3)}")
        else:
            passed += 1
            print(f"ok {name}")
    print(f"kserve: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
