"""A `tidal serve` gateway as a child process, for the fault suite and the benchmarks.

    with GatewayProcess(config_dict, workdir) as gw:   # starts, waits until ready
        gw.port, gw.pid, gw.worker_pids()
        gw.stats()                                     # GET /admin/stats (the token is set)
        gw.put_plan(plan_dict)                         # PUT /admin/plan -> (status, body)
        gw.kill() / gw.terminate() / gw.rss_mb()

The config gets a free port and the admin token (env TIDAL_TOKEN of the child only). On exit
the gateway gets SIGTERM, then SIGKILL after `stop_timeout_s`; its worker processes are killed
if they outlived it (only processes the gateway started are touched).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

TOKEN = "fault-suite-admin-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cgroup_dirs(pid: int) -> list[str]:
    """Worker cgroups `p<pid>-w*` of gateway `pid` in Tidal's cpu hierarchies (names)."""
    out: list[str] = []
    for mount in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup"):
        root = Path(mount) / "tidal"
        with contextlib.suppress(OSError):
            out += [d.name for d in root.iterdir() if d.name.startswith(f"p{pid}-w")]
    return sorted(set(out))


class GatewayProcess:
    """See the module docstring."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        *,
        ready_timeout_s: float = 120.0,
        stop_timeout_s: float = 20.0,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        # gRPC off unless asked for: its default port (8001) would collide between gateways.
        self.config = {"grpc": False, **config, "port": self.port}
        self.workdir = Path(workdir)
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.env = {**os.environ, "TIDAL_TOKEN": TOKEN, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(
            base_url=self.base, timeout=30, headers={"authorization": f"Bearer {TOKEN}"}
        )
        self._workers: set[int] = set()
        self._log = self.workdir / f"gateway-{self.port}.log"

    # ------------------------------------------------------------------ lifecycle
    def start(self, attempts: int = 4) -> GatewayProcess:
        """Start and wait until ready. The port is picked free before the child binds it, so
        another process may take it in between: then retry on a new port."""
        for i in range(attempts):
            try:
                return self._start_once()
            except RuntimeError as e:
                if (
                    "address already in use" not in str(e).lower()
                    and "errno 98" not in str(e).lower()
                ):
                    raise
                if i == attempts - 1:
                    raise
                self._set_port(free_port())
        raise AssertionError("unreachable")

    def _set_port(self, port: int) -> None:
        self.port = port
        self.config = {**self.config, "port": port}
        self.base = f"http://127.0.0.1:{port}"
        self.client.close()
        self.client = httpx.Client(
            base_url=self.base, timeout=30, headers={"authorization": f"Bearer {TOKEN}"}
        )
        self._log = self.workdir / f"gateway-{port}.log"

    def _start_once(self) -> GatewayProcess:
        path = self.workdir / f"serve-{self.port}.yaml"
        path.write_text(yaml.safe_dump(self.config))
        log = open(self._log, "wb")  # noqa: SIM115 (the child writes to it until it exits)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tidal.cli.main", "serve", str(path)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}: {self.log_tail(60)}")
            with contextlib.suppress(httpx.TransportError):
                if self.client.get("/v2/health/ready", timeout=2).status_code == 200:
                    self._workers |= set(self.worker_pids())
                    return self
            time.sleep(0.1)
        self.close()
        raise RuntimeError(f"gateway not ready after {self.ready_timeout_s} s: {self.log_tail()}")

    def log_tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-n:])
        return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """PIDs of the gateway's live worker processes (its children running worker_main)."""
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        out = []
        for k in kids:
            with contextlib.suppress(psutil.Error):
                if "tidal.dataplane.worker_main" in " ".join(k.cmdline()):
                    out.append(k.pid)
        self._workers |= set(out)
        return out

    def rss_mb(self) -> float:
        return float(psutil.Process(self.pid).memory_info().rss) / 2**20

    def open_fds(self) -> int:
        return int(psutil.Process(self.pid).num_fds())

    def kill(self) -> None:
        """SIGKILL the gateway (its workers are left to notice on their own)."""
        self.worker_pids()
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def terminate(self) -> int:
        """SIGTERM, wait; returns the exit code (SIGKILL after stop_timeout_s)."""
        assert self.proc is not None
        self.worker_pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def reap_workers(self, timeout_s: float = 10.0) -> list[int]:
        """Wait for this gateway's workers to exit; SIGKILL (SIGCONT first) those still
        alive after `timeout_s`. Returns the PIDs that had to be killed."""
        deadline = time.monotonic() + timeout_s
        alive = [p for p in self._workers if psutil.pid_exists(p)]
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = [p for p in alive if _running(p)]
        for p in alive:
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
        return alive

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
        self.reap_workers()
        self.client.close()

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ admin
    def stats(self) -> dict[str, Any]:
        r = self.client.get("/admin/stats")
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def refusals(self, reset: bool = False) -> dict[str, Any]:
        """GET /admin/refusals: the server-side refusal latency per admission stage since the
        last reset (`reset`: clear it after reading)."""
        r = self.client.get("/admin/refusals" + ("?reset=true" if reset else ""))
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def put_plan(self, plan: dict[str, Any], query: str = "") -> tuple[int, Any]:
        r = self.client.put(f"/admin/plan{query}", json=plan)
        return r.status_code, r.json()

    def wait_idle(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Stats once every stage has nothing queued or running (or after `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            s = self.stats()
            if all(v["queue_len"] == 0 and v["in_flight"] == 0 for v in s.values()):
                return s
            if time.monotonic() > deadline:
                return s
            time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


__all__ = ["TOKEN", "GatewayProcess", "cgroup_dirs", "free_port"]
