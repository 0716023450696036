"""The front-end processes of `frontends: N`, seen from the scheduler process: their listening
sockets (SO_REUSEPORT, created here and handed to the children, so port 0 works and a
replacement takes over its predecessor's socket) and `FrontEnds`, which starts them, reports
and replaces one that exits (after a back-off), and stops them (SIGTERM, SIGKILL after the
grace). The children's environment has no credential-like variables
(`tidal.dataplane.security.child_env`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict

import orjson

from tidal.dataplane.security import child_env
from tidal.dataplane.server import ServerLimits

log = logging.getLogger("tidal.frontend")

RESTART_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Delay before the k-th consecutive restart of a front end (the last one repeats)."""


def listen_sockets(host: str, port: int, n: int) -> list[socket.socket]:
    """`n` listening TCP sockets on the same address (SO_REUSEPORT); port 0 picks one."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    out: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(fam, socket.SOCK_STREAM)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            port = s.getsockname()[1]
            s.listen(4096)
            s.set_inheritable(True)
    except OSError:
        for s in out:
            s.close()
        raise
    return out


class FrontEnds:
    """Starts, watches and replaces the front-end processes (scheduler side)."""

    def __init__(self, socks: list[socket.socket], ingress: str, limits: ServerLimits,
                 certfile: str | None, keyfile: str | None, log_level: str) -> None:  # fmt: skip
        self.socks = socks
        self.ingress = ingress
        self.limits = limits
        self.tls = (certfile, keyfile) if certfile and keyfile else None
        self.log_level = log_level
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * len(socks)
        self.restarts = [0] * len(socks)
        self.deaths: list[tuple[int, int, int | None]] = []  # (index, pid, exit status)
        self.stopping = False
        self._watch: asyncio.Task[None] | None = None

    def _spawn(self, i: int) -> None:
        fd = self.socks[i].fileno()
        cmd = [sys.executable, "-m", "tidal.dataplane.frontend", "--ingress", self.ingress,
               "--listen-fd", str(fd), "--index", str(i), "--log-level", self.log_level,
               "--limits", orjson.dumps(asdict(self.limits)).decode()]  # fmt: skip
        if self.tls is not None:
            cmd += ["--certfile", self.tls[0], "--keyfile", self.tls[1]]
        self.procs[i] = subprocess.Popen(
            cmd, pass_fds=(fd,), env=child_env(), start_new_session=True, stdin=subprocess.DEVNULL
        )

    def start(self) -> None:
        for i in range(len(self.socks)):
            self._spawn(i)
        self._watch = asyncio.get_running_loop().create_task(self._watcher())

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None and p.poll() is None]

    async def _watcher(self) -> None:
        """Poll the children; a dead one is reported and replaced (with back-off)."""
        while not self.stopping:
            await asyncio.sleep(0.2)
            for i, p in enumerate(self.procs):
                if self.stopping or p is None or p.poll() is None:
                    continue
                self.deaths.append((i, p.pid, p.returncode))
                k = self.restarts[i]
                delay = RESTART_BACKOFF_S[min(k, len(RESTART_BACKOFF_S) - 1)]
                log.warning("front end %d (pid %d) exited with status %s; replacing it in %.1f s",
                            i, p.pid, p.returncode, delay)  # fmt: skip
                print(f"tidal: front end {i} (pid {p.pid}) exited with status {p.returncode}; "
                      "replacing it", file=sys.stderr)  # fmt: skip
                self.procs[i] = None
                await asyncio.sleep(delay)
                if not self.stopping:
                    self.restarts[i] = k + 1
                    self._spawn(i)

    async def stop(self, grace_s: float) -> None:
        """SIGTERM every front end (they finish running requests), SIGKILL after the grace."""
        self.stopping = True
        if self._watch is not None:
            self._watch.cancel()
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        t_end = time.monotonic() + grace_s + 2.0
        while any(p.poll() is None for p in live) and time.monotonic() < t_end:
            await asyncio.sleep(0.05)
        for p in live:
            if p.poll() is None:
                p.kill()
                p.wait()
        for s in self.socks:
            s.close()
