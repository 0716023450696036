"""The language-neutral event path end to end: `tidal cep serve`, events pushed and results
read over HTTP with curl, with the Node.js client (SSE and WebSocket) and with `tidal cep
push | tail`; 429 backpressure, 404 for an unknown operator, 401 without the token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tidal.cep import operators
from tidal.cep.redis_server import free_port

TIDAL = str(Path(sys.executable).parent / "tidal")
TOKEN = "events-token-0123456789abcdef"
CLIENT_JS = Path(operators.__file__).parent.parent / "sdk" / "node" / "client.js"
SLOW = """
import time

from tidal.cep.sdk.python import Operator


class Slow(Operator):
    def process(self, batch):
        time.sleep(0.3)
        return batch


OPERATOR = Slow
"""
H = f"Authorization: Bearer {TOKEN}"


@pytest.fixture(scope="module")
def node_manager(tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("cep-events")
    port = free_port()
    env = {**os.environ, "TIDAL_CEP_TOKEN": TOKEN}
    p = subprocess.Popen(
        [TIDAL, "cep", "serve", "--root", str(root), "--port", str(port), "--max-pending", "60"],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        ff = operators.path("fraud_flag").read_text()
        for name, src in (("ff", ff), ("ffn", ff), ("slow", SLOW)):
            r = httpx.post(
                f"{url}/v1/operators/{name}/versions", json={"source": src}, headers=auth
            )
            assert r.status_code == 200, r.text
        yield url
    finally:
        p.terminate()
        p.wait(20)


def events(lo: int, hi: int) -> list[dict]:
    return [{"seq": i, "card": i, "amount": 2000.0 if i % 3 == 0 else 10.0} for i in range(lo, hi)]


def check(results: list[dict], lo: int, hi: int) -> None:
    assert [e["seq"] for e in results] == list(range(lo, hi))  # none lost, none duplicated
    assert all(e["flag"] == int(e["seq"] % 3 == 0 or e["card"] % 997 == 7) for e in results)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-s", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.curl
def test_curl_pushes_and_reads_results_over_sse(node_manager) -> None:
    url = node_manager
    r = curl(
        "-H", H, "-X", "POST", f"{url}/v1/operators/ff/events", "-d", json.dumps(events(0, 50))
    )
    assert json.loads(r.stdout) == {"accepted": 50}
    r = curl("-N", "-H", H, f"{url}/v1/operators/ff/results?after=0&limit=50&idle_s=20")
    got = [
        e
        for line in r.stdout.splitlines()
        if line.startswith("data: ")
        for e in json.loads(line[6:])["events"]
    ]
    check(got, 0, 50)
    assert "id: 50" in r.stdout
    # errors: unknown operator 404, no token 401, not JSON 400
    r = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", H, "-X", "POST",
             f"{url}/v1/operators/nope/events", "-d", "[]")  # fmt: skip
    assert r.stdout == "404"
    r = curl("-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
             f"{url}/v1/operators/ff/events", "-d", "[]")  # fmt: skip
    assert r.stdout == "401"
    r = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", H,
             f"{url}/v1/operators/nope/results?limit=1")  # fmt: skip
    assert r.stdout == "404"


@pytest.mark.node
def test_node_client_pushes_and_reads_over_sse_and_websocket(node_manager) -> None:
    url = node_manager
    env = {**os.environ, "TIDAL_CEP_TOKEN": TOKEN}
    stdin = "\n".join(json.dumps(e) for e in events(50, 100))
    r = subprocess.run(["node", str(CLIENT_JS), "push", url, "ffn"], input=stdin,
                       capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"accepted": 50}
    r = subprocess.run(
        ["node", str(CLIENT_JS), "tail", url, "ffn", "50", "20"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    check([json.loads(x) for x in r.stdout.splitlines()], 50, 100)
    # WebSocket: push 20 and receive results (from id 1: the 50 earlier, then the new 20)
    ws_env = {**env, "NODE_OPTIONS": "--experimental-websocket"}
    stdin = "\n".join(json.dumps(e) for e in events(100, 120))
    r = subprocess.run(["node", str(CLIENT_JS), "ws", url, "ffn", "70"], input=stdin,
                       capture_output=True, text=True, env=ws_env, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    check([json.loads(x) for x in r.stdout.splitlines()], 50, 120)


def test_cli_push_and_tail_and_429_backpressure(node_manager, tmp_path) -> None:
    url = node_manager
    env = {**os.environ, "TIDAL_CEP_TOKEN": TOKEN}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # a slow operator with --max-pending 60: the second push of 50 is refused with 429
    r1 = httpx.post(f"{url}/v1/operators/slow/events", json=events(0, 50), headers=auth)
    r2 = httpx.post(f"{url}/v1/operators/slow/events", json=events(50, 100), headers=auth)
    assert r1.status_code == 200 and r2.status_code == 429, r2.text
    assert r2.headers["retry-after"] == "1"
    stats = httpx.get(f"{url}/v1/operators/slow/stats", headers=auth).json()
    assert stats["gateway"]["refused"] == 50
    # `tidal cep push` retries on 429 until all are accepted; `tail` reads all 100 back
    f = tmp_path / "ev.jsonl"
    f.write_text("\n".join(json.dumps(e) for e in events(50, 100)))
    r = subprocess.run([TIDAL, "cep", "push", "slow", str(f), "--chunk", "25", "--url", url],
                       capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["accepted"] == 50
    r = subprocess.run(
        [TIDAL, "cep", "tail", "slow", "--count", "100", "--idle-s", "30", "--url", url],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["seq"] for x in r.stdout.splitlines()] == list(range(100))
    r = subprocess.run([TIDAL, "cep", "update", "nope", "1", "--url", url],
                       capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "HTTP 404" in r.stderr
