"""Peers for `tidal bench dataplane`, each run in its own process.

- `bare_app`: a bare inline ASGI app on uvicorn: parses the same OIP v2 JSON body, computes the
  noop (identity) inline and answers; no queue, no worker process. The ceiling of any gateway.
- `_decode` / `_encode`: the OIP v2 body codec every peer app here shares (numpy and orjson
  only: `tidal.bench.peers_ray_app`, Ray Serve for `tidal bench dataplane` and
  `tidal bench goodput`, imports them inside the peers' own virtual environment).
"""

from __future__ import annotations

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
