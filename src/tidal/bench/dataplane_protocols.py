"""Protocols side by side (part of `tidal bench dataplane`; alone:
`python -m tidal.bench.dataplane_protocols [--duration S] [--workloads noop,resnet18]`).

One `tidal serve` per workload (one replica on the whole machine, max batch 8, REST and gRPC
on free ports) measured three ways at the same 8 closed-loop connections:
- REST JSON: wrk, OIP v2 JSON body (64 floats for noop; 150,528 for resnet18's image);
- REST binary: wrk, the binary tensor extension (raw FP32 after the JSON header);
- gRPC: `grpc_load` below, ModelInfer with raw_input_contents, 8 concurrent calls on one
  channel (a pre-serialized request, the response left undecoded: the cheapest client).
Then Triton's `tritonserver` (the nvidia-pytriton wheel in .venv-peers/triton, see
`tidal.bench.peers`; its Python backend running ONNX Runtime on the same ONNX file, same
threads, max batch 8) with its gRPC frontend on, under the same gRPC load: Tidal's gRPC vs
Triton's. The load average is printed at the start and the end: absolute figures move 2-3x
with this shared machine's load; the same-run ratios are what compare.

Output: `protocols` -> workload -> {rest_json, rest_binary, grpc} -> {rps, p50_ms, p99_ms,
errors}; `vs_triton_grpc` -> workload -> {tidal, triton, tidal_over_triton_rps}; `settings`.
Figures only: nothing here is asserted by tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tidal.core.errors import TidalError

CONNECTIONS = 8
BATCH = 8
SHAPES = {"noop": ((64,), (64,)), "resnet18": ((3, 224, 224), (1000,))}
Echo = Callable[[str], Any]


def grpc_request(model: str, x: np.ndarray) -> bytes:
    """A serialized ModelInferRequest carrying `x` (FP32) as `input-0` in raw_input_contents."""
    from tidal.dataplane.grpc_v2 import grpc_predict_v2_pb2 as pb

    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="input-0", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(np.ascontiguousarray(x, np.float32).tobytes())
    return bytes(req.SerializeToString())


async def _grpc_load(target: str, body: bytes, concurrency: int, duration: float) -> dict[str, Any]:
    import grpc

    opts = [("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20)]  # fmt: skip
    async with grpc.aio.insecure_channel(target, options=opts) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        lat: list[float] = []
        errors: dict[str, int] = {}
        stop = time.perf_counter() + duration

        async def worker() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    await call(body, timeout=30)
                except grpc.aio.AioRpcError as e:
                    errors[e.code().name] = errors.get(e.code().name, 0) + 1
                    continue
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    if not lat:
        return {"rps": 0.0, "p50_ms": None, "p99_ms": None, "errors": errors}
    a = np.array(lat) * 1e3
    return {
        "rps": round(len(lat) / wall, 1),
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "errors": errors,
    }


def grpc_load(target: str, body: bytes, concurrency: int, duration: float) -> dict[str, Any]:
    """Closed-loop gRPC load: `concurrency` calls in flight for `duration` s."""
    return asyncio.run(_grpc_load(target, body, concurrency, duration))


def _bodies(tmp: Path, w: str) -> dict[str, tuple[Path, dict[str, str]]]:
    shape = SHAPES[w][0]
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    if w == "noop":
        x = np.round(x, 4)
    inp = {"name": "input-0", "shape": [1, *shape], "datatype": "FP32"}
    pj = tmp / f"{w}.json"
    pj.write_bytes(json.dumps({"inputs": [{**inp, "data": x.reshape(-1).tolist()}]}).encode())
    head = json.dumps({"inputs": [{**inp, "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    pb = tmp / f"{w}.bin"
    pb.write_bytes(head + x.tobytes())
    pg = tmp / f"{w}.grpc"
    pg.write_bytes(grpc_request(w, x))
    return {
        "rest_json": (pj, {"Content-Type": "application/json"}),
        "rest_binary": (pb, {"Content-Type": "application/octet-stream",
                             "Inference-Header-Content-Length": str(len(head))}),
        "grpc": (pg, {}),
    }  # fmt: skip


def _tidal_cmd(tmp: Path, w: str, port: int, gport: int) -> list[str]:
    cfg = {
        "host": "127.0.0.1", "port": port, "grpc_port": gport, "default_slo_ms": 30_000,
        "max_body_bytes": 16 * 1024 * 1024,
        "models": [{"name": w, "variants": [w]}],
        "plan": {"stages": [{"stage": w, "variants": [{"name": w}], "replicas": 1,
                             "cores": 2.0, "batch": BATCH}]},
    }  # fmt: skip
    p = tmp / f"tidal-{w}.yaml"
    p.write_text(json.dumps(cfg))  # JSON is YAML
    return [sys.executable, "-m", "tidal.cli.main", "serve", str(p), "--port", str(port)]


def _measure_grpc(target: str, body: bytes, duration: float) -> dict[str, Any]:
    grpc_load(target, body, CONNECTIONS, 2.0)  # warm-up
    return grpc_load(target, body, CONNECTIONS, duration)


def _measure_wrk(url: str, tmp: Path, body: Path, headers: dict[str, str], duration: float
                 ) -> dict[str, Any]:  # fmt: skip
    from tidal.bench.dataplane import _lua, _wrk

    lua = _lua(tmp, body, headers)
    _wrk(url, lua, CONNECTIONS, 2.0)  # warm-up
    fig = _wrk(url, lua, CONNECTIONS, duration)
    fig.pop("socket_errors", None)
    fig["errors"] = fig.pop("non_2xx", 0)
    return fig


def _run_tidal(tmp: Path, w: str, duration: float, say: Echo) -> dict[str, Any]:
    from tidal.bench.dataplane import _free_port, _Server, _wait_http

    bodies = _bodies(tmp, w)
    port, gport = _free_port(), _free_port()
    url = f"http://127.0.0.1:{port}/v2/models/{w}/infer"
    srv = _Server(_tidal_cmd(tmp, w, port, gport))
    out: dict[str, Any] = {}
    try:
        _wait_http(url, *bodies["rest_binary"], srv.proc, 300)
        for kind in ("rest_json", "rest_binary"):
            out[kind] = _measure_wrk(url, tmp, *bodies[kind], duration)
            say(f"[{w}] tidal {kind}: {out[kind]}")
        out["grpc"] = _measure_grpc(f"127.0.0.1:{gport}", bodies["grpc"][0].read_bytes(), duration)
        say(f"[{w}] tidal grpc: {out['grpc']}")
    finally:
        srv.stop()
    return out


def _run_triton(tmp: Path, w: str, duration: float, say: Echo) -> dict[str, Any]:
    from tidal.bench.dataplane import _free_port
    from tidal.bench.peers import ModelSpec, Running, launch_triton
    from tidal.models.onnx_cache import onnx_path

    ins, outs = SHAPES[w]
    spec = ModelSpec(w, onnx_path(w), ins, outs, threads=2, max_batch=BATCH, slo_ms=30_000)
    port, gport = _free_port(), _free_port()
    launch = launch_triton(spec, port, tmp)
    launch.cmd = [c for c in launch.cmd if c != "--allow-grpc=false"]
    launch.cmd += ["--allow-grpc=true", f"--grpc-port={gport}"]
    body = _bodies(tmp, w)
    run = Running(launch)
    try:
        run.wait_ready(body["rest_binary"][0].read_bytes(), body["rest_binary"][1])
        fig = _measure_grpc(f"127.0.0.1:{gport}", body["grpc"][0].read_bytes(), duration)
        say(f"[{w}] triton grpc: {fig}")
        return fig
    finally:
        run.stop()


def run_protocols(
    duration: float = 8.0, workloads: list[str] | None = None, echo: Echo | None = None
) -> dict[str, Any]:
    """Measure every protocol on Tidal and gRPC on Triton (see the module docstring)."""
    import shutil

    if shutil.which("wrk") is None:
        raise TidalError("wrk not found: apt-get install wrk")
    say = echo or (lambda s: None)
    workloads = workloads or ["noop", "resnet18"]
    res: dict[str, Any] = {"protocols": {}, "vs_triton_grpc": {}}
    res["settings"] = {
        "duration_s": duration, "connections": CONNECTIONS, "max_batch": BATCH,
        "cores": 2.0, "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
    }  # fmt: skip
    say(f"load average at start: {res['settings']['loadavg_at_start']}")
    with tempfile.TemporaryDirectory(prefix="tidal-bench-proto-") as d:
        tmp = Path(d)
        for w in workloads:
            if w not in SHAPES:
                raise TidalError(f"unknown workload {w!r}; valid: {', '.join(SHAPES)}")
            try:
                res["protocols"][w] = _run_tidal(tmp, w, duration, say)
            except TidalError as e:
                res["protocols"][w] = {"error": str(e)}
                say(f"[{w}] tidal failed: {e}")
            try:
                tri = _run_triton(tmp, w, duration, say)
            except TidalError as e:
                res["vs_triton_grpc"][w] = {"error": str(e)}
                say(f"[{w}] triton unavailable: {e}")
                continue
            mine = res["protocols"][w].get("grpc", {})
            ratio = (
                round(mine["rps"] / tri["rps"], 2) if mine.get("rps") and tri.get("rps") else None
            )
            res["vs_triton_grpc"][w] = {
                "tidal": mine,
                "triton": tri,
                "tidal_over_triton_rps": ratio,
            }
    res["settings"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    say(f"load average at end: {res['settings']['loadavg_at_end']}")
    say(table(res))
    return res


def table(res: dict[str, Any]) -> str:
    """The figures side by side (rps / p50 ms / p99 ms)."""
    lines = [f"{'workload':10} {'server/protocol':22} {'rps':>9} {'p50 ms':>9} {'p99 ms':>9}"]

    def row(w: str, name: str, f: dict[str, Any]) -> None:
        if "rps" not in f:
            lines.append(f"{w:10} {name:22} {f.get('error', 'n/a')[:60]}")
            return
        lines.append(f"{w:10} {name:22} {f['rps']:>9} {f['p50_ms']!s:>9} {f['p99_ms']!s:>9}")

    for w, figs in res["protocols"].items():
        for kind in ("rest_json", "rest_binary", "grpc"):
            row(w, f"tidal {kind}", figs.get(kind, figs))
        tri = res["vs_triton_grpc"].get(w, {})
        row(w, "triton grpc", tri.get("triton", tri))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--workloads", default="noop,resnet18")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    out = run_protocols(a.duration, a.workloads.split(","), None if a.json else print)
    if a.json:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
