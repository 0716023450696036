"""`tidal serve` with two HTTP front-end processes (`frontends: 2`, tidal.dataplane.frontend):
answers are correct through either front end, a client that hangs up cancels its request in
the one scheduler process (queued or running), and a killed front end is reported and
replaced while the server keeps serving. Behaviour only: nothing here depends on timing
beyond generous waits."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest

from tidal.bench.gateway_proc import GatewayProcess

pytestmark = pytest.mark.timeout(240)


def _config() -> dict[str, Any]:
    return {
        "frontends": 2,
        "models": [{"name": "echo", "variants": ["noop"]}],
        "default_slo_ms": 120_000,
        "max_body_bytes": 64 * 1024,
        # One replica at batch 1: a stopped worker holds one batch, later requests queue. The
        # watchdog must not replace the stopped worker while the test holds it.
        "limits": {"stall_ms": 600_000, "watchdog_factor": 100, "watchdog_grace_ms": 600_000},
        "plan": {"stages": [{"stage": "echo", "variants": [{"name": "noop"}], "replicas": 1,
                             "cores": 0.5, "batch": 1}]},
    }  # fmt: skip


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with GatewayProcess(_config(), Path(tmp_path_factory.mktemp("fe"))) as g:
        yield g


def _frontends(gw: GatewayProcess) -> list[int]:
    out = []
    for k in psutil.Process(gw.pid).children():
        with contextlib.suppress(psutil.Error):
            if "tidal.dataplane.frontend" in " ".join(k.cmdline()) and k.status() != "zombie":
                out.append(k.pid)
    return sorted(out)


def _body(vals: list[float]) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "input-0", "shape": [1, 64], "datatype": "FP32", "data": vals}]}
    )


def _raw_request(port: int, body: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
              b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
    return s


def _wait(pred: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    t_end = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > t_end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_answers_through_both_frontends(gw: GatewayProcess) -> None:
    assert len(_frontends(gw)) == 2
    for i in range(24):  # a new connection each time: the kernel spreads them over both
        vals = [float(i + j) for j in range(64)]
        with httpx.Client(base_url=gw.base, timeout=30) as c:
            r = c.post("/v2/models/echo/infer", content=_body(vals),
                       headers={"content-type": "application/json"})  # fmt: skip
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["shape"] == [1, 64] and out["data"] == vals
    with httpx.Client(base_url=gw.base, timeout=30) as c:
        assert c.post("/v2/models/nope/infer", content=_body([0.0] * 64)).status_code == 404
        bad = c.post("/v2/models/echo/infer", content=b'{"inputs": [}')
        assert bad.status_code == 400 and "error" in bad.json()
        big = c.post("/v2/models/echo/infer", content=b" " * (65 * 1024))
        assert big.status_code == 413  # the front end's body cap
        assert c.get("/admin/stats").status_code in (401, 403)  # no token: refused
    assert "echo" in gw.stats()  # the token is checked by the scheduler process
    # Pipelining through a front end: two requests in one write, two answers in order.
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    with s:
        one = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        s.sendall(one + b"GET /v2/models/echo HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 200") < 2:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    assert data.index(b'"live"') < data.index(b'"name":"echo"')


def test_frontends_get_no_secrets(gw: GatewayProcess) -> None:
    assert "TIDAL_TOKEN" in gw.env  # the scheduler process has it (admin calls work)
    assert gw.client.get("/admin/stats").status_code == 200
    for pid in _frontends(gw):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not any(e.startswith(b"TIDAL_TOKEN=") for e in env)


def test_disconnect_cancels_queued_and_running(gw: GatewayProcess) -> None:
    (worker,) = gw.worker_pids()
    before = gw.stats()["echo"]
    os.kill(worker, signal.SIGSTOP)  # the batch sent to it now runs until SIGCONT
    try:
        a = _raw_request(gw.port, _body([1.0] * 64))
        _wait(lambda: gw.stats()["echo"]["in_flight"] == 1, "request a in its batch")
        b = _raw_request(gw.port, _body([2.0] * 64))
        _wait(lambda: gw.stats()["echo"]["queue_len"] == 1, "request b queued")
        a.close()
        b.close()
        _wait(lambda: gw.stats()["echo"]["cancelled"] == before["cancelled"] + 2,
              "both requests cancelled")  # fmt: skip
        assert gw.stats()["echo"]["queue_len"] == 0
    finally:
        os.kill(worker, signal.SIGCONT)
    after = gw.wait_idle()["echo"]
    assert after["queue_len"] == 0 and after["in_flight"] == 0
    assert after["completions"] == before["completions"]  # neither was answered
    r = httpx.post(gw.base + "/v2/models/echo/infer", content=_body([3.0] * 64), timeout=30)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [3.0] * 64


def test_killed_frontend_is_reported_and_replaced(gw: GatewayProcess) -> None:
    old = _frontends(gw)
    assert len(old) == 2
    os.kill(old[0], signal.SIGKILL)
    _wait(lambda: len(_frontends(gw)) == 2 and old[0] not in _frontends(gw),
          "a replacement front end")  # fmt: skip
    _wait(lambda: "exited with status -9" in gw.log_tail(200), "the death reported in the log")
    for i in range(12):  # every connection is served, whichever socket the kernel picks
        r = httpx.post(gw.base + "/v2/models/echo/infer", content=_body([float(i)] * 64),
                       timeout=30)  # fmt: skip
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [float(i)] * 64
    assert old[1] in _frontends(gw)  # the other one was left alone


def _binary_body(vals: list[float]) -> tuple[bytes, int]:
    inp = {"name": "input-0", "shape": [1, 64], "datatype": "FP32",
           "parameters": {"binary_data_size": 256}}  # fmt: skip
    out = {"name": "output-0", "parameters": {"binary_data": True}}
    head = orjson.dumps({"inputs": [inp], "outputs": [out]})
    return head + struct.pack("<64f", *vals), len(head)


def _cases() -> list[tuple[str, bytes, dict[str, str]]]:
    """(path, body, headers): infer requests the front ends check and decode themselves (the
    compact path, tidal.dataplane.frontend_infer) and some they forward whole."""
    ok = _body([float(j) for j in range(64)])
    one = {"inputs": [{"name": "input-0", "shape": [1, 64], "datatype": "FP32",
                       "data": [1.0] * 64}]}  # fmt: skip
    binary, hlen = _binary_body([0.5] * 64)
    js = {"content-type": "application/json"}
    return [
        ("/v2/models/echo/infer", ok, js),
        (
            "/v2/models/echo/infer",
            orjson.dumps({**one, "id": "r1", "parameters": {"slo_ms": 9e4}}),
            {**js, "x-tidal-slo-ms": "60000"},
        ),  # fmt: skip
        (
            "/v2/models/echo/infer",
            orjson.dumps(
                {**one, "outputs": [{"name": "output-0", "parameters": {"classification": 3}}]}
            ),
            js,
        ),  # fmt: skip
        ("/v2/models/echo/infer", binary, {"inference-header-content-length": str(hlen)}),
        ("/v2/models/echo/infer", binary, {"inference-header-content-length": "x"}),
        ("/v2/models/echo/infer", binary, {"inference-header-content-length": "99999"}),
        ("/v2/models/echo/infer", b'{"inputs": [}', js),
        ("/v2/models/echo/infer", b"[]", js),
        (
            "/v2/models/echo/infer",
            orjson.dumps({"inputs": [{**one["inputs"][0], "shape": [1, 63]}]}),
            js,
        ),
        (
            "/v2/models/echo/infer",
            orjson.dumps({"inputs": [{**one["inputs"][0], "name": "zz"}]}),
            js,
        ),
        ("/v2/models/echo/infer", orjson.dumps({**one, "parameters": {"slo_ms": "fast"}}), js),
        ("/v2/models/echo/infer", orjson.dumps({**one, "parameters": {"slo_ms": -1}}), js),
        ("/v2/models/echo/infer", ok, {**js, "x-tidal-slo-ms": "1e-9"}),  # refused: no budget
        ("/v2/models/echo/infer", orjson.dumps({**one, "outputs": [{"name": "nope"}]}), js),
        ("/v2/models/echo/versions/noop/infer", ok, js),
        ("/v2/models/echo/versions/9/infer", ok, js),
        ("/v2/models/nope/infer", ok, js),
    ]


def _answer(r: httpx.Response) -> tuple[int, Any, str | None, str | None]:
    """What must be equal: status, body (timings dropped), content type, Retry-After."""
    if r.headers.get("content-type", "").startswith("application/json"):
        body: Any = r.json()
        for k in ("queue_ms", "total_ms", "batch_size", "batch_sizes"):
            body.get("parameters", {}).pop(k, None)
        if "remaining budget" in str(body.get("error", "")):  # the budget is measured
            body["error"] = body["error"].split(" is below")[-1]
    else:
        hlen = int(r.headers["inference-header-content-length"])
        head = orjson.loads(r.content[:hlen])
        for k in ("queue_ms", "total_ms", "batch_size", "batch_sizes"):
            head["parameters"].pop(k, None)
        body = (head, r.content[hlen:])
    return r.status_code, body, r.headers.get("content-type"), r.headers.get("retry-after")


def test_frontend_answers_equal_one_process(gw: GatewayProcess, tmp_path: Path) -> None:
    """Every status code and message through the front ends is the one-process server's."""
    with GatewayProcess({**_config(), "frontends": 1}, tmp_path) as one:
        for path, body, headers in _cases():
            got = [_answer(httpx.post(g.base + path, content=body, headers=headers, timeout=30))
                   for g in (gw, one)]  # fmt: skip
            assert got[0] == got[1], (path, body[:80], headers)
    codes = [httpx.post(gw.base + p, content=b, headers=h, timeout=30).status_code
             for p, b, h in _cases()]  # fmt: skip
    assert codes.count(200) == 5 and 503 in codes and 404 in codes and codes.count(400) >= 8
