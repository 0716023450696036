"""The CPU baseline: the same integer model served through Tidal's inference gateway
(the control-plane path NetNN argues against), against the modeled in-switch path.

The gateway serves catalog variants only and the model catalog has no registration hook, so
the NetNN model is served through the gateway's documented extension point, the executor
factory (`Gateway(config, factory=...)`): the stage is declared with the catalog's `noop`
variant (input: 64 float32), and the factory returns `NetNNExecutor`, which runs the integer
reference. One packet travels as 23 float32 values, each holding 3 of its 69 feature bytes
(68 bytes + the quantized inter-arrival time) as an exact integer < 2^24, zero-padded to 64;
the answer row starts with [verdict, logit0, logit1]. Requests go over real HTTP (uvicorn on
loopback, OIP v2 `POST /v2/models/netnn/infer`), one at a time, so the figure is the latency
of one decision, not throughput.

Modeled switch latency: hops x (stages x `stage_ns` + `hop_ns`), with defaults from public
Tofino-class figures (about 1 ns per match-action stage at ~1 GHz; a few hundred ns of
port-to-port latency per hop); the emulator's own Python time per hop is reported too, but it
measures the emulator, not an ASIC.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from typing import Any

import numpy as np

from tidal.core.clock import Clock, MonotonicClock
from tidal.innet.fabric import Fabric
from tidal.innet.intref import IntNet
from tidal.innet.program import Mapping

WIDTH = 64


def encode_rows(x: np.ndarray, iat: np.ndarray) -> np.ndarray:
    """(N, 68) bytes + (N,) IAT -> (N, 64) float32, 3 bytes per value (exact)."""
    feats = np.concatenate([x.astype(np.int64), iat.astype(np.int64)[:, None]], axis=1)
    trip = feats.reshape(len(feats), 23, 3)
    vals = (trip[:, :, 0] << 16) | (trip[:, :, 1] << 8) | trip[:, :, 2]
    out = np.zeros((len(feats), WIDTH), dtype=np.float32)
    out[:, :23] = vals.astype(np.float32)
    return out


def decode_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `encode_rows`."""
    v = rows[:, :23].astype(np.int64)
    trip = np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], axis=2).reshape(len(rows), 69)
    return trip[:, :68].astype(np.uint8), trip[:, 68].astype(np.uint8)


class NetNNExecutor:
    """An `Executor` (tidal.dataplane.replica) running the integer reference on the CPU."""

    def __init__(self, net: IntNet) -> None:
        self.net = net
        self.pid = os.getpid()
        self.cold_start_s = 0.0

    async def infer_async(self, batch: np.ndarray) -> np.ndarray:
        x, iat = decode_rows(np.asarray(batch, dtype=np.float32))
        lg = self.net.forward(x, iat)
        out = np.zeros((len(x), WIDTH), dtype=np.float32)
        out[:, 0] = (lg[:, 1] > lg[:, 0]).astype(np.float32)
        out[:, 1:3] = lg.astype(np.float32)
        return out

    def resize(self, cores: float) -> float:
        return 0.0

    def stop(self) -> None:
        return None

    def alive(self) -> bool:
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure_cpu_path(
    net: IntNet, x: np.ndarray, iat: np.ndarray, clock: Clock | None = None
) -> dict[str, Any]:
    """Per-request latency (ms) of the gateway path over loopback HTTP; verdicts included."""
    import httpx
    import uvicorn

    from tidal.config.serve import parse_serve_config
    from tidal.dataplane.gateway import Gateway
    from tidal.dataplane.http import OIPApp

    clock = clock or MonotonicClock()
    port = _free_port()
    cfg = parse_serve_config(
        {
            "host": "127.0.0.1",
            "port": port,
            "grpc": False,  # REST only: no second (fixed) port to collide with other servers
            "default_slo_ms": 1000,
            "serve_late": True,
            "models": [{"name": "netnn", "variants": ["noop"]}],
            "plan": {
                "stages": [
                    {
                        "stage": "netnn",
                        "variants": [{"name": "noop"}],
                        "replicas": 1,
                        "cores": 1.0,
                        "batch": 1,
                    }
                ]
            },
        }
    )
    gw = Gateway(cfg, factory=lambda _v, _c: NetNNExecutor(net))
    server = uvicorn.Server(
        uvicorn.Config(OIPApp(gw), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    rows = encode_rows(x, iat)
    lat, verdicts = [], []
    try:
        deadline = clock.now() + 60
        while not server.started and clock.now() < deadline:
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            for _ in range(100):
                if c.get("/v2/health/ready").status_code == 200:
                    break
                time.sleep(0.1)
            for k in range(len(rows)):
                body = {
                    "inputs": [
                        {
                            "name": "input-0",
                            "shape": [1, WIDTH],
                            "datatype": "FP32",
                            "data": rows[k].tolist(),
                        }
                    ]
                }
                t0 = clock.now()
                r = c.post("/v2/models/netnn/infer", json=body)
                lat.append((clock.now() - t0) * 1000)
                r.raise_for_status()
                verdicts.append(int(r.json()["outputs"][0]["data"][0]))
    finally:
        server.should_exit = True
        th.join(timeout=30)
    a = np.asarray(lat)
    return {
        "requests": len(a),
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "verdicts": verdicts,
    }


def modeled_switch_path(
    mapping: Mapping, stage_ns: float = 1.0, hop_ns: float = 400.0
) -> dict[str, Any]:
    """Hop count, stages on the longest path and the modeled ASIC latency (ns)."""
    fab = Fabric(mapping)
    hops = fab.hop_count()
    stages = {p.switch_id: p.n_stages for p in mapping.programs}
    # Longest path in stages (each hop's switch processes its full pipeline).
    depth: dict[int, int] = {}

    def d(sw: int) -> int:
        if sw not in depth:
            nxt = [h for h in fab.hops[sw] if h >= 0]
            depth[sw] = stages[sw] + max((d(h) for h in nxt), default=0)
        return depth[sw]

    starts = {s for v in mapping.entry.values() for s in v}
    path_stages = max(d(s) for s in starts)
    return {
        "hops": hops,
        "stages_on_path": path_stages,
        "modeled_ns": path_stages * stage_ns + hops * hop_ns,
        "stage_ns": stage_ns,
        "hop_ns": hop_ns,
    }


def emulator_per_hop_ms(
    mapping: Mapping, x: np.ndarray, iat: np.ndarray, clock: Clock | None = None
) -> float:
    """Wall time of the Python emulator per packet per hop (frames path), in ms."""
    clock = clock or MonotonicClock()
    fab = Fabric(mapping)
    t0 = clock.now()
    fab.run_frames(x, iat)
    return (clock.now() - t0) * 1000 / max(1, len(x)) / max(1, fab.hop_count())


_ = asyncio  # the executor is awaited by the gateway's event loop
