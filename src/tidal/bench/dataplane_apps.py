"""Peers for `tidal bench dataplane`, each run in its own process.

- `bare_app`: a bare inline ASGI app on uvicorn: parses the same OIP v2 JSON body, computes the
  noop (identity) inline and answers; no queue, no worker process. The ceiling of any gateway.
- `python -m tidal.bench.dataplane_apps ray PORT WORKLOAD`: the same endpoint on Ray Serve
  (one replica, `@serve.batch(max_batch_size=8)`); the resnet18 replica runs the same ONNX file
  with ONNX Runtime as Tidal's worker. Prints READY, serves until stdin closes.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import orjson

_HDR = [(b"content-type", b"application/json")]


def _decode(body: bytes, header_len: int | None) -> np.ndarray:
    """The single input tensor of an OIP v2 body (JSON or binary extension)."""
    if header_len is None:
        inp = orjson.loads(body)["inputs"][0]
        return np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
    inp = orjson.loads(body[:header_len])["inputs"][0]
    return np.frombuffer(body[header_len:], dtype=np.float32).reshape(inp["shape"])


def _encode(y: np.ndarray, model: str) -> bytes:
    return orjson.dumps(
        {
            "model_name": model,
            "outputs": [
                {
                    "name": "output-0",
                    "datatype": "FP32",
                    "shape": list(y.shape),
                    "data": np.ascontiguousarray(y, dtype=np.float32).reshape(-1),
                }
            ],
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Inline noop over OIP v2 JSON: the no-queue, no-worker ceiling."""
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        return
    chunks = []
    while True:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    x = _decode(b"".join(chunks), None)
    body = _encode(x * 1.0, "noop")
    await send({"type": "http.response.start", "status": 200, "headers": _HDR})
    await send({"type": "http.response.body", "body": body})


def _ray_main(port: int, workload: str) -> None:  # pragma: no cover - run by the benchmark
    import logging

    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    onnx_file = None
    if workload != "noop":
        from tidal.models.onnx_cache import onnx_path

        onnx_file = str(onnx_path(workload))

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
    class Model:
        def __init__(self, path: str | None) -> None:
            self.sess = None
            if path is not None:
                import onnxruntime as ort

                so = ort.SessionOptions()
                so.intra_op_num_threads = 2
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
                self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
                self.name = self.sess.get_inputs()[0].name

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
        async def run(self, xs: list[np.ndarray]) -> list[np.ndarray]:
            x = np.concatenate(xs)
            y = x * 1.0 if self.sess is None else self.sess.run(None, {self.name: x})[0]
            out, i = [], 0
            for a in xs:
                out.append(y[i : i + a.shape[0]])
                i += a.shape[0]
            return out

        async def __call__(self, request: Request) -> Response:
            body = await request.body()
            h = request.headers.get("inference-header-content-length")
            x = _decode(body, int(h) if h else None)
            y = await self.run(x)
            return Response(_encode(y, workload), media_type="application/json")

    serve.run(
        Model.bind(onnx_file),  # type: ignore[attr-defined]
        route_prefix=f"/v2/models/{workload}/infer",
        name=workload,
    )
    print("READY", flush=True)
    sys.stdin.read()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) == 4 and sys.argv[1] == "ray":
        _ray_main(int(sys.argv[2]), sys.argv[3])
    else:
        print(json.dumps({"usage": "python -m tidal.bench.dataplane_apps ray PORT WORKLOAD"}))
        sys.exit(2)
