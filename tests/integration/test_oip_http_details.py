"""HTTP details with ordinary clients (urllib, requests-style http.client) against the real
ASGI app on uvicorn, serving the zoo's noop model in a real worker: compressed bodies with the
cap on the decoded size, an over-cap body answered 413 after draining (not a reset), 405 with
Allow, TRACE, the server version, and bad datatypes that used to be 500s."""

from __future__ import annotations

import gzip
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from oip_server import free_port

import tidal
from tidal.config.serve import parse_serve_config
from tidal.dataplane.gateway import Gateway
from tidal.dataplane.http import OIPApp

CAP = 64 * 1024
BODY = {"inputs": [{"name": "input-0", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    port = free_port()
    cfg = parse_serve_config(
        {
            "models": [{"name": "echo", "variants": ["noop"]}],
            "port": port,
            "grpc": False,
            "max_body_bytes": CAP,
            "default_slo_ms": 30000,
        }
    )
    app = OIPApp(Gateway(cfg))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if time.monotonic() > deadline or not t.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    t.join(timeout=30)


def _post(base: str, path: str, data: bytes, headers: dict[str, str]) -> tuple[int, Any, Any]:
    req = urllib.request.Request(base + path, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        with e:  # an HTTPError holds the response open
            return e.code, json.loads(e.read()), e.headers


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some clients send
    ],
)
def test_compressed_bodies(base: str, encoding: str, encode: Any) -> None:
    body = encode(json.dumps(BODY).encode())
    status, out, _ = _post(base, "/v2/models/echo/infer", body, {"Content-Encoding": encoding})
    assert status == 200, out
    assert out["outputs"][0]["data"][:2] == [0.5, 0.5]


def test_decoded_size_is_capped_and_bad_encodings_refused(base: str) -> None:
    bomb = gzip.compress(b"{" + b" " * (CAP * 20) + b"}")  # small on the wire, 20x the cap
    assert len(bomb) < CAP
    status, out, _ = _post(base, "/v2/models/echo/infer", bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and "decoded body exceeds the cap" in out["error"]
    status, out, _ = _post(
        base, "/v2/models/echo/infer", b"\x1f\x8bnot", {"Content-Encoding": "gzip"}
    )
    assert status == 400 and "corrupt gzip body" in out["error"]
    status, out, _ = _post(base, "/v2/models/echo/infer", b"{}", {"Content-Encoding": "br"})
    assert status == 415 and "unsupported Content-Encoding 'br'" in out["error"]


def test_over_cap_body_gets_413_not_a_reset(base: str) -> None:
    big = json.dumps({**BODY, "pad": "x" * (CAP * 64)}).encode()  # 4 MiB, past socket buffers
    status, out, _ = _post(base, "/v2/models/echo/infer", big, {"Content-Type": "application/json"})
    assert status == 413 and "exceeds the cap" in out["error"]
    # chunked (no Content-Length): found while reading, drained, then 413
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    chunks = iter([big[i : i + 8192] for i in range(0, len(big), 8192)])
    conn.request(
        "POST", "/v2/models/echo/infer", body=chunks, headers={"Transfer-Encoding": "chunked"},
        encode_chunked=True,
    )  # fmt: skip
    r = conn.getresponse()
    assert r.status == 413 and "exceeds the cap" in json.loads(r.read())["error"]
    conn.close()
    # the server keeps serving
    assert _post(base, "/v2/models/echo/infer", json.dumps(BODY).encode(), {})[0] == 200


def test_methods_version_and_bad_datatypes(base: str) -> None:
    for method, path, allow in [
        ("GET", "/v2/models/echo/infer", "POST"),
        ("POST", "/v2/health/live", "GET, HEAD"),
        ("DELETE", "/v2/models/echo", "GET, HEAD"),
        ("GET", "/v2/repository/index", "POST"),
        ("TRACE", "/v2", "GET, POST, PUT, HEAD"),
        ("TRACE", "/nowhere", "GET, POST, PUT, HEAD"),
    ]:
        req = urllib.request.Request(base + path, method=method)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        e.value.close()  # an HTTPError holds the response open
        assert e.value.code == 405, (method, path)
        assert e.value.headers["Allow"] == allow, (method, path)
    with urllib.request.urlopen(base + "/v2", timeout=30) as r:
        assert json.loads(r.read())["version"] == tidal.__version__
    bads: list[tuple[Any, str]] = [
        ({}, "unknown datatype {}"),
        ([], "unknown datatype []"),
        (None, "unknown datatype None"),
    ]
    for bad, msg in bads:
        body = {"inputs": [{**BODY["inputs"][0], "datatype": bad}]}
        status, out, _ = _post(base, "/v2/models/echo/infer", json.dumps(body).encode(), {})
        assert status == 400 and msg in out["error"], out
    status, out, _ = _post(
        base, "/v2/models/echo/versions/nope/infer", json.dumps(BODY).encode(), {}
    )
    assert status == 404 and "unknown version 'nope'" in out["error"]
    with urllib.request.urlopen(base + "/v2/models/echo/config", timeout=30) as r:
        cfg = json.loads(r.read())
    assert cfg["input"] == [{"name": "input-0", "data_type": "TYPE_FP32", "dims": [64]}]
    with urllib.request.urlopen(base + "/v2/models/stats", timeout=30) as r:
        assert json.loads(r.read())["model_stats"][0]["name"] == "echo"


def test_grpc_port_taken_explicit_fails_default_degrades() -> None:
    """An explicit grpc_port that is taken fails the start; the default port taken only logs
    (REST serves alone). grpc's SO_REUSEPORT is off, so a second server never shares a port."""
    import asyncio
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]

    async def start(**cfg: Any) -> Any:
        app = OIPApp(Gateway(parse_serve_config({"models": [{"name": "e", "variants": ["noop"]}],
                                                 "port": 1, **cfg})))  # fmt: skip
        try:
            return await app.start_grpc()
        finally:
            await app.stop_grpc()

    hold = socket.socket()
    try:
        hold.bind(("127.0.0.1", 8001))  # taken by us, or already by someone else: taken
        hold.listen()
    except OSError:
        pass
    try:
        with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{port} \\(grpc_port\\)"):
            asyncio.run(start(grpc_port=port))
        assert asyncio.run(start()) is None  # default 8001 taken: REST only, logged
    finally:
        taken.close()
        hold.close()
