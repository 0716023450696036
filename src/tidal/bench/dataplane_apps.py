"""Peers for `tidal bench dataplane`, each run in its own process.

- `bare_app`: a bare inline ASGI app on uvicorn: parses the same OIP v2 JSON body, computes the
  noop (identity) inline and answers; no queue, no worker process. The ceiling of any gateway.
- `python -m tidal.bench.dataplane_apps ray PORT WORKLOAD`: the same endpoint on Ray Serve,
  the app of `tidal bench goodput` (`tidal.bench.peers_ray_app`: one replica,
  `@serve.batch(max_batch_size=8)`); the resnet18 replica runs the same ONNX file with ONNX
  Runtime as Tidal's worker. Prints READY, serves until stdin closes.
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
    """Ray Serve on the same app as `tidal bench goodput`'s peer (tidal.bench.peers_ray_app):
    one replica, max batch 8, 2 threads; the noop inline, resnet18 on the cached ONNX file."""
    # Function-local: peers_ray_app imports this module (its decode/encode) at its top.
    from tidal.bench.peers_ray_app import main

    onnx_file = None
    if workload != "noop":
        from tidal.models.onnx_cache import onnx_path  # the model zoo only for resnet18

        onnx_file = str(onnx_path(workload))
    main({"port": port, "model": workload, "max_batch": 8, "threads": 2, "onnx": onnx_file})


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) == 4 and sys.argv[1] == "ray":
        _ray_main(int(sys.argv[2]), sys.argv[3])
    else:
        print(json.dumps({"usage": "python -m tidal.bench.dataplane_apps ray PORT WORKLOAD"}))
        sys.exit(2)
