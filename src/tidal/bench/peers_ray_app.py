"""The Ray Serve peer of `tidal bench goodput` and `tidal bench dataplane`.

`tidal bench goodput` runs it inside `.venv-peers/ray_serve` (not imported by Tidal's venv):
`PYTHONPATH=<tidal src> python peers_ray_app.py '<json spec>'`; `tidal bench dataplane` runs
`python -m tidal.bench.peers_ray_app '<json spec>'` in Tidal's venv (when Ray is installed).

One replica, `@serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=0.005)`, ONNX Runtime
on the same file and thread settings as Tidal's worker (spec `onnx`: null runs the noop, the
identity, inline); OIP v2 JSON (and the binary tensor extension) at `/v2/models/<model>/infer`.
The SLO, when the spec has `request_timeout_s`, is the proxy's request timeout (HTTP 408 past
it). Prints READY, serves until stdin closes.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import numpy as np

# The same OIP v2 decode/encode as the bare app of `tidal bench dataplane`: that module needs
# only numpy and orjson, and the launcher puts Tidal's src/ on PYTHONPATH (Ray's workers too).
from tidal.bench.dataplane_apps import _decode, _encode


def main(spec: dict[str, Any]) -> None:
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    # Ray waits a fixed 30 s for its raylet to register; on a loaded 2-core box that can
    # time out, so try a few times before giving up.
    for attempt in range(3):
        try:
            ray.init(
                num_cpus=spec["threads"],
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
                _temp_dir=spec.get("tmp"),
            )
            break
        except Exception as e:
            ray.shutdown()
            if attempt == 2:
                raise
            print(f"ray.init failed ({e}); retrying", file=sys.stderr, flush=True)
    http: dict[str, Any] = {"host": "127.0.0.1", "port": spec["port"]}
    if spec.get("request_timeout_s") is not None:
        http["request_timeout_s"] = spec["request_timeout_s"]
    serve.start(http_options=http)
    model, max_batch = spec["model"], spec["max_batch"]

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
    class Model:
        def __init__(self, path: str | None, threads: int) -> None:
            self.sess: Any = None
            if path is None:  # the noop: the identity, inline
                return
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
            self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            self.name = self.sess.get_inputs()[0].name

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=0.005)
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
            y = await self.run(_decode(body, int(h) if h else None))
            return Response(_encode(y, model), media_type="application/json")

    serve.run(
        Model.bind(spec.get("onnx"), spec["threads"]),  # type: ignore[attr-defined]
        route_prefix=f"/v2/models/{model}/infer",
        name=model,
    )
    print("READY", flush=True)
    sys.stdin.read()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
