"""`tidal serve examples/two-stage.yaml` as a real process over real HTTP: both stages serve,
standard OIP v2 requests work, /metrics carries the per-stage series, the admin plan endpoint
needs the token, and SIGTERM stops every worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "integration-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = _free_port()
    env = {**os.environ, "TIDAL_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidal.cli.main", "serve", str(ROOT / "examples/two-stage.yaml"),
         "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read().decode() if proc.stdout else "exited")
            try:
                if httpx.get(base + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("server never became ready")
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _infer_body(slo: float | None = None) -> dict[str, object]:
    body: dict[str, object] = {
        "id": "req-1",
        "inputs": [{"name": "input-0", "shape": [1, 64], "datatype": "FP32",
                    "data": [i / 64 for i in range(64)]}],
    }  # fmt: skip
    if slo is not None:
        body["parameters"] = {"slo_ms": slo}
    return body


def test_standard_v2_requests_through_both_stages(server: tuple[str, object]) -> None:
    base, _ = server
    assert httpx.get(base + "/v2/health/live").json() == {"live": True}
    assert httpx.get(base + "/v2").json()["name"] == "tidal"
    meta = httpx.get(base + "/v2/models/digits-pipeline").json()
    assert meta["stages"] == ["preprocess", "classify"]
    assert meta["outputs"][0]["shape"] == [-1, 10]
    assert httpx.get(base + "/v2/models/digits-pipeline/ready").json()["ready"] is True
    variants = set()
    for _ in range(8):
        r = httpx.post(base + "/v2/models/digits-pipeline/infer", json=_infer_body(500))
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["id"] == "req-1" and out["outputs"][0]["shape"] == [1, 10]
        p = out["parameters"]
        assert p["variants"][0] == "noop" and len(p["batch_sizes"]) == 2
        assert p["total_ms"] >= p["queue_ms"] >= 0
        variants.add(p["variants"][1])
    assert variants == {"digits-mlp", "digits-linear"}  # 0.75 / 0.25 weights
    r = httpx.post(
        base + "/v2/models/digits-pipeline/infer",
        json=_infer_body(),
        headers={"x-tidal-slo-ms": "0.001"},
    )
    assert r.status_code == 503 and r.headers["retry-after"] and r.json()["cause"] == "refused"
    assert httpx.post(base + "/v2/models/x/infer", json=_infer_body()).status_code == 404
    assert httpx.post(base + "/v2/models/digits-pipeline/infer", content=b"{").status_code == 400


def test_metrics_series(server: tuple[str, object]) -> None:
    base, _ = server
    httpx.post(base + "/v2/models/digits-pipeline/infer", json=_infer_body(500))
    text = httpx.get(base + "/metrics").text
    for stage in ("preprocess", "classify"):
        for series in (
            f'tidal_arrivals_total{{stage="{stage}"}}',
            f'tidal_completions_total{{stage="{stage}"}}',
            f'tidal_slo_violations_total{{cause="late",stage="{stage}"}}',
            f'tidal_slo_violations_total{{cause="expired",stage="{stage}"}}',
            f'tidal_slo_violations_total{{cause="error",stage="{stage}"}}',
            f'tidal_latency_seconds_bucket{{le="0.01",stage="{stage}"}}',
            f'tidal_queue_length{{stage="{stage}"}}',
            f'tidal_batch_size_count{{stage="{stage}"}}',
            f'tidal_replicas{{stage="{stage}"}}',
            f'tidal_cores_total{{stage="{stage}"}}',
            f'tidal_cold_start_seconds_count{{stage="{stage}"}}',
            f'tidal_resize_seconds_count{{stage="{stage}"}}',
        ):
            assert series in text, series
    assert 'tidal_slo_violations_total{cause="refused",stage="preprocess"} 1.0' in text


def test_admin_plan_and_shutdown(server: tuple[str, subprocess.Popen[bytes]]) -> None:
    base, proc = server
    plan = {
        "stages": [
            {"stage": "classify", "variants": [{"name": "digits-cnn"}], "replicas": 1,
             "cores": 1.0, "batch": 4}
        ]
    }  # fmt: skip
    assert httpx.put(base + "/admin/plan", json=plan).status_code == 401
    auth = {"authorization": f"Bearer {TOKEN}"}
    r = httpx.put(base + "/admin/plan", json=plan, headers=auth, timeout=120)
    assert r.status_code == 200, r.text
    got = httpx.get(base + "/admin/plan", headers=auth).json()
    assert [s["stage"] for s in got["stages"]] == ["preprocess", "classify"]
    r = httpx.post(base + "/v2/models/digits-pipeline/infer", json=_infer_body(1000))
    assert r.json()["parameters"]["variants"] == ["noop", "digits-cnn"]
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children  # worker processes
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"workers left running: {[p.pid for p in alive]}"
