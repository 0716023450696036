"""A real `tidal serve --model-repository DIR` process for the protocol tests: REST and gRPC on
free ports, the test-built repository of oip_models.py, an admin token, and a plan that gives
both versions of `clf` a replica (so a pinned version has one)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import oip_models

TOKEN = "oip-test-token-0123456789"


@dataclass(frozen=True)
class Served:
    http: str  # http://127.0.0.1:P
    grpc: str  # 127.0.0.1:G
    repo: Path
    proc: subprocess.Popen[bytes]

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PLAN = {
    "stages": [
        {"stage": "clf", "variants": [{"name": "clf/1", "weight": 1.0},
                                      {"name": "clf/2", "weight": 0.0, "replicas": 1}],
         "replicas": 1, "cores": 0.25, "batch": 8},
        {"stage": "pair", "variants": [{"name": "pair/1"}], "replicas": 1, "cores": 0.25,
         "batch": 8},
        {"stage": "text", "variants": [{"name": "text/1"}], "replicas": 1, "cores": 0.25,
         "batch": 8},
    ]
}  # fmt: skip


@contextlib.contextmanager
def serve_repository(root: Path, *extra: str) -> Iterator[Served]:
    """Build the repository under `root`, serve it, yield when ready, SIGTERM at the end."""
    repo = oip_models.build_repository(root / "repo")
    port, gport = free_port(), free_port()
    env = {**os.environ, "TIDAL_TOKEN": TOKEN}
    log = (root / "serve.log").open("wb")
    # The versions are unprofiled (--no-auto-profile): the conservative estimate needs a
    # generous default SLO on a loaded 2-core machine.
    cfg = root / "serve.yaml"
    cfg.write_text(f"model_repository: {repo}\ndefault_slo_ms: 30000\n")
    cmd = [sys.executable, "-m", "tidal.cli.main", "serve", str(cfg),
           "--port", str(port), "--grpc-port", str(gport), "--no-auto-profile", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tidal serve exited {proc.returncode}: "
                                   f"{(root / 'serve.log').read_text()[-2000:]}")  # fmt: skip
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base + "/v2/health/ready", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("tidal serve not ready after 240 s")
            time.sleep(0.3)
        r = httpx.put(base + "/admin/plan", json=PLAN, timeout=120,
                      headers={"authorization": f"Bearer {TOKEN}"})  # fmt: skip
        if r.status_code != 200:
            raise RuntimeError(f"plan refused: {r.status_code} {r.text}")
        yield Served(base, f"127.0.0.1:{gport}", repo, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
