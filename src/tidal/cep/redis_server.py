"""Start and stop a private `redis-server` (tests, benchmarks, `tidal cep serve --redis`).

The server listens on 127.0.0.1 on a free port, keeps no data on disk (no RDB, no AOF) and
lives in its own temporary directory. `RedisServer` is a context manager.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType

from tidal.core.errors import TidalError


def redis_available() -> bool:
    """True when a `redis-server` binary is on PATH."""
    return shutil.which("redis-server") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server child process; `url` is ``redis://127.0.0.1:<port>/0``."""

    def __init__(self, port: int | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise TidalError("redis-server not found on PATH (apt-get install redis-server)")
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="tidal-redis-")
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._wait_ready()

    def _wait_ready(self) -> None:
        import redis

        r = redis.Redis(host="127.0.0.1", port=self.port)
        for _ in range(500):  # readiness: PING answers (up to ~5 s)
            if self.proc.poll() is not None:
                raise TidalError(f"redis-server exited with code {self.proc.returncode}")
            try:
                if r.ping():
                    r.close()
                    return
            except redis.ConnectionError:
                time.sleep(0.01)
        raise TidalError(f"redis-server on port {self.port} did not answer PING")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
