"""SIGKILL of the gateway under load, then a restart; SIGTERM of the restarted one.

Exact accounting: the requests in flight when the gateway dies are `lost` on the client side
(the connection resets: no server can answer them), every request before the kill and after
the restart is answered correctly; the dead gateway's cgroups and its orphaned worker (frozen
with SIGSTOP so it cannot notice its parent died) are swept when the new gateway starts; the
SIGTERM'd gateway shuts down and removes its own cgroups and workers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from tidal.bench.checked_load import make_requests, run_open_loop
from tidal.bench.gateway_proc import GatewayProcess, cgroup_dirs

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

CONFIG = {
    "models": [{"name": "echo", "variants": ["noop"]}],
    "default_slo_ms": 2000,
    "plan": {
        "stages": [
            {"stage": "echo", "variants": [{"name": "noop"}], "replicas": 2, "cores": 0.5,
             "batch": 8}
        ]
    },
}  # fmt: skip
CGROUPS = Path("/sys/fs/cgroup/cpu/tidal").is_dir()


def test_gateway_sigkill_then_restart_then_sigterm(tmp_path: Path) -> None:
    a = GatewayProcess(CONFIG, tmp_path).start()
    try:
        reqs = make_requests(300, 100.0, 1, 2000, seed=1, prefix="a")
        kill_at = reqs[150].send_at

        async def load_and_kill() -> object:
            async def killer() -> None:
                await asyncio.sleep(kill_at + 0.05)
                os.kill(a.worker_pids()[0], signal.SIGSTOP)  # an orphan that cannot exit
                a.kill()

            res, _ = await asyncio.gather(
                run_open_loop("127.0.0.1", a.port, "echo", reqs, timeout_s=10), killer()
            )
            return res

        summary = asyncio.run(load_and_kill())
        c = summary.counts  # type: ignore[attr-defined]
        assert c["wrong"] == 0 and c["ok"] + c["lost"] == 300, c
        assert c["ok"] >= 100 and c["lost"] >= 1, c  # answered until the kill, then reset
        lost = [r for r in summary.results if r.outcome == "lost"]  # type: ignore[attr-defined]
        assert all(int(r.rid[1:]) >= 100 for r in lost)  # only requests near/after the kill
        stale = cgroup_dirs(a.pid)
        frozen = [p for p in a._workers if psutil.pid_exists(p)]
        assert frozen, "the SIGSTOPped worker should outlive its gateway"
        if CGROUPS:
            assert stale, "a SIGKILLed gateway leaves its worker cgroups behind"

        with GatewayProcess(CONFIG, tmp_path) as b:
            # Swept at start: no cgroup of the dead gateway, and its frozen orphan is gone.
            assert cgroup_dirs(a.pid) == []
            for _ in range(100):
                if not any(_alive(p) for p in frozen):
                    break
                time.sleep(0.05)
            assert not any(_alive(p) for p in frozen)
            after = asyncio.run(
                run_open_loop(
                    "127.0.0.1", b.port, "echo", make_requests(100, 100.0, 1, 2000, prefix="b")
                )
            )
            assert after.counts["ok"] == 100, after.counts
            mine = cgroup_dirs(b.pid)
            workers = b.worker_pids()
            assert len(workers) == 2
            if CGROUPS:
                assert len(mine) == 2
            # SIGTERM: a graceful shutdown (uvicorn re-raises the signal after it, hence -15)
            assert b.terminate() in (0, -signal.SIGTERM)
            assert cgroup_dirs(b.pid) == []  # ... that removes its own cgroups
            assert b.reap_workers(timeout_s=5) == []  # and its workers exited by themselves
    finally:
        a.close()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
