"""Hostile connections against the gateway's HTTP server (tidal.dataplane.server):

- slowloris: headers dribbled one byte at a time are cut off with 408 after
  `header_timeout_s`, and the connection is closed;
- a stalled body (Content-Length larger than what is sent) gets 408 after `body_timeout_s`;
- 20,000 idle sockets: the server sheds idle connections past `max_connections`, so a new
  client still gets 200, and the idle sockets are closed after `idle_timeout_s`;
- during all of it, well-behaved requests are answered correctly.
The 20,000 idle sockets come from two holder processes (10,000 each: this machine's
descriptor limit is 20,000 per process and raising it needs CAP_SYS_RESOURCE).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from conftest import echo_config
from tidal.bench.checked_load import Req, binary_request, read_response
from tidal.bench.gateway_proc import GatewayProcess

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]
FLOOD = 20_000
LIMITS = {
    "header_timeout_s": 1.0,
    "body_timeout_s": 1.0,
    "idle_timeout_s": 6.0,
    "keepalive_timeout_s": 6.0,
    "max_connections": 4000,
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    cfg = echo_config(1, 0.5, limits=LIMITS)
    with GatewayProcess(cfg, Path(tmp_path_factory.mktemp("conn"))) as g:
        yield g


def _good_request(port: int, rid: str = "good") -> int:
    """One well-behaved request on a new connection; its status (the output is checked)."""

    async def main() -> int:
        x = np.arange(64, dtype=np.float32).reshape(1, 64)
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
        writer.write(binary_request("127.0.0.1", "echo", Req(rid, x, 5000)))
        status, _h, body = await asyncio.wait_for(read_response(reader), 30)
        writer.close()
        if status == 200:
            doc = orjson.loads(body)
            assert doc["id"] == rid and doc["outputs"][0]["data"] == x.ravel().tolist()
        return status

    return asyncio.run(main())


def _read_all(s: socket.socket, timeout_s: float) -> bytes:
    """Everything the server sends until it closes (or `timeout_s`)."""
    s.settimeout(timeout_s)
    out = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_slowloris_headers_get_408_and_close(gw: GatewayProcess) -> None:
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.sendall(b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    got = b""
    for ch in b"X-Slow: " + b"a" * 100:  # one byte every 0.1 s, never the blank line
        try:
            s.sendall(bytes([ch]))
        except OSError:
            break
        r, _, _ = select.select([s], [], [], 0.1)
        if r:
            got = _read_all(s, 5.0)
            break
    elapsed = time.monotonic() - t0
    s.close()
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert elapsed < 10.0  # cut off by the header timeout (1 s), not after the 100 bytes
    assert _good_request(gw.port) == 200


def test_stalled_body_gets_408_and_close(gw: GatewayProcess) -> None:
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.sendall(
        b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n" + b'{"inputs": ['
    )
    got = _read_all(s, 10.0)
    s.close()
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert _good_request(gw.port) == 200


_HOLDER = r"""
import contextlib, resource, socket, sys, time
n, port = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
for _ in range(n):
    c = socket.socket()
    c.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        c.connect(("127.0.0.1", port))
    socks.append(c)
print("open", flush=True)
sys.stdin.readline()  # hold them until told
time.sleep(0.5)
left = 0
for c in socks[-500:]:
    try:
        left += c.recv(1) != b""
    except BlockingIOError:
        left += 1  # still open: no EOF from the server
    except OSError:
        pass  # reset or never connected: closed
print(left, flush=True)
"""


def test_idle_flood_does_not_lock_out_a_new_client(gw: GatewayProcess) -> None:
    # 20,000 idle sockets from two holder processes (each under this machine's 20,000
    # descriptor limit; raising the hard limit needs CAP_SYS_RESOURCE).
    per = FLOOD // 2
    holders = [
        subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(per), str(gw.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for h in holders:
            assert h.stdout is not None and h.stdout.readline().strip() == "open"
        time.sleep(1.0)  # let the server accept (and shed) them
        # A new client is served while 20,000 idle sockets are open or were just shed.
        assert _good_request(gw.port, "after-flood") == 200
        fds = gw.open_fds()
        assert fds < LIMITS["max_connections"] + 500, fds  # the cap holds on the server
        # Idle sockets that were never shed are closed after idle_timeout_s.
        time.sleep(LIMITS["idle_timeout_s"] + 3.0)
        lefts = []
        for h in holders:
            assert h.stdin is not None and h.stdout is not None
            h.stdin.write("go\n")
            h.stdin.flush()
            lefts.append(int(h.stdout.readline()))
        assert lefts == [0, 0], lefts
        assert _good_request(gw.port, "after-idle") == 200
    finally:
        for h in holders:
            h.kill()
            h.communicate()  # reaps it and closes its pipes
