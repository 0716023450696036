"""The Ray substrate's direct data path without Ray (`tidal.control.ray_worker`): an actor's
endpoint and worker process, and the gateway's DirectWorker, in this process. The worker's
data sockets are TCP connections to this process (no relay), a wrong token is refused, the
worker exits when its owner dies, and every batch comes back through the frame codec."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tidal.control.ray_worker import (
    ROLE_SYNC,
    DirectWorker,
    Endpoint,
    WorkerProcess,
    open_channels,
)
from tidal.dataplane.worker import WorkerDied


def _inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(link[8:-1])
    return out


def tcp_peers(pid: int) -> list[tuple[str, str]]:
    """(local, remote) hex address:port of each TCP socket `pid` holds (from /proc/net/tcp)."""
    mine = _inodes(pid)
    out = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[9] in mine:
            out.append((f[1], f[2]))
    return out


def start_direct(variant: str = "noop") -> tuple[WorkerProcess, DirectWorker]:
    ep = Endpoint("127.0.0.1")
    sync, asock = open_channels("127.0.0.1", ep.port, ep.token)
    a, b = ep.accept(timeout_s=10)
    owner = WorkerProcess(variant, 1.0, (sorted(os.sched_getaffinity(0))[0],), a, b)
    dw = DirectWorker.attach(variant, 1.0, sync, asock, where="here", local_pid=True)
    info = dw.wait_ready(120)
    assert info["pid"] == owner.pid
    owner.settle()
    return owner, dw


def test_direct_worker_serves_over_tcp_without_a_relay() -> None:
    owner, dw = start_direct()
    try:
        # The worker holds exactly the two TCP connections, and their peers are sockets of
        # this (the gateway's) process: the owner kept no copy, nothing relays.
        peers = tcp_peers(owner.pid)
        assert len(peers) == 2
        mine = {local for local, _ in tcp_peers(os.getpid())}
        assert {remote for _, remote in peers} <= mine
        x = np.arange(3 * 64, dtype=np.float32).reshape(3, 64)
        assert np.array_equal(dw.infer(x), x)

        async def many() -> list[np.ndarray]:
            return await asyncio.gather(*(dw.infer_async(x + i) for i in range(20)))

        outs = asyncio.run(many())
        assert all(np.array_equal(o, x + i) for i, o in enumerate(outs))
        assert dw.progress() is not None  # same kernel and pid namespace: /proc is probed
        assert owner.cpu_state()["pid"] == owner.pid
    finally:
        dw.stop()
        owner.stop()
    assert owner.proc.poll() is not None
    with pytest.raises(WorkerDied):
        dw.infer(np.zeros((1, 64), np.float32))


def test_endpoint_refuses_a_wrong_token() -> None:
    ep = Endpoint("127.0.0.1")
    bad = socket.create_connection(("127.0.0.1", ep.port))
    bad.sendall(b"x" * 32 + ROLE_SYNC)
    sync, asock = open_channels("127.0.0.1", ep.port, ep.token)
    a, b = ep.accept(timeout_s=10)
    try:
        assert bad.recv(1) == b""  # closed by the endpoint, not counted
        a.sendall(b"ping")
        assert sync.recv(4) == b"ping"  # the accepted ones are ours
        b.sendall(b"pong")
        assert asock.recv(4) == b"pong"
        with pytest.raises(OSError):  # one-shot: the listener is gone
            socket.create_connection(("127.0.0.1", ep.port), timeout=2).close()
    finally:
        for s in (bad, sync, asock, a, b):
            s.close()


OWNER = """
import sys, time
from tidal.control.ray_worker import Endpoint, WorkerProcess
ep = Endpoint("127.0.0.1")
print(ep.port, ep.token.hex(), flush=True)
a, b = ep.accept(timeout_s=30)
w = WorkerProcess("noop", 1.0, (0,), a, b)
print(w.pid, flush=True)
time.sleep(600)
"""


def test_worker_dies_with_its_owner() -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        port, token = owner.stdout.readline().split()
        sync, asock = open_channels("127.0.0.1", int(port), bytes.fromhex(token))
        dw = DirectWorker.attach("noop", 1.0, sync, asock)
        dw.wait_ready(120)
        pid = int(owner.stdout.readline())
        assert dw.pid == pid
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=30)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):
                    break  # exited; its parent (gone) cannot reap it, init will
            time.sleep(0.1)
        with pytest.raises(WorkerDied):
            dw.infer(np.zeros((1, 64), np.float32))
        dw.stop()
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
