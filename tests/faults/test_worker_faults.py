"""SIGKILL and SIGSTOP of a worker under open-loop load, with 2 replicas and with 1.

Exact counts: every request sent arrives once at the gateway and gets one correct answer
(`ok`, or `late` for the few that wait out a replacement), 0 wrong, 0 lost, 0 refused (their
deadlines allow a retry elsewhere or waiting for the replacement), nothing left queued or
running; the victim is replaced by a new process; a SIGSTOPped worker is found by the
watchdog within 1 s + its predicted latency of the stop.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from conftest import assert_exact, reset_plan
from tidal.bench.checked_load import Summary, make_requests, run_open_loop
from tidal.bench.gateway_proc import GatewayProcess

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]
RATE = 150.0  # requests/s, 1 row each: far below the noop lane's capacity


def _run_with_fault(
    gw: GatewayProcess, n: int, slo_ms: float, sig: signal.Signals, at_s: float
) -> tuple[Summary, int, float]:
    """Load `n` requests at RATE; send `sig` to one worker at `at_s`; (summary, pid, t_sig)."""
    reqs = make_requests(n, RATE, 1, slo_ms, seed=int(sig), prefix=f"{sig.name}-")
    victim = gw.worker_pids()[0]
    t_sig = [0.0]

    async def main() -> Summary:
        async def fault() -> None:
            await asyncio.sleep(at_s)
            t_sig[0] = time.monotonic()
            os.kill(victim, sig)

        res, _ = await asyncio.gather(run_open_loop("127.0.0.1", gw.port, "echo", reqs), fault())
        return res

    return asyncio.run(main()), victim, t_sig[0]


def _wait_replaced(gw: GatewayProcess, victim: int, replicas: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = gw.worker_pids()
        s = gw.stats()["echo"]
        if victim not in pids and s["replicas"] == replicas and len(pids) == replicas:
            return
        time.sleep(0.1)
    raise AssertionError(f"replica {victim} not replaced: {gw.stats()['echo']}")


@pytest.mark.parametrize("replicas", [2, 1])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["sigkill", "sigstop"])
def test_worker_fault_under_load(
    echo_gateway: GatewayProcess, sig: signal.Signals, replicas: int
) -> None:
    gw = echo_gateway
    reset_plan(gw, replicas)
    _wait_replaced(gw, -1, replicas)
    before = gw.stats()
    summary, victim, _ = _run_with_fault(gw, 450, 8000, sig, 1.0)
    _wait_replaced(gw, victim, replicas)
    after = gw.wait_idle()
    assert_exact(summary, before, after)
    c = summary.counts
    assert c["ok"] + c["late"] == 450 and c["refused"] == 0 and c["error"] == 0, c
    s0, s1 = before["echo"], after["echo"]
    assert s1["replica_deaths"] - s0["replica_deaths"] == 1
    # A SIGSTOPped worker is found by the watchdog (a SIGKILLed one by its socket's EOF).
    assert s1["watchdog_kills"] - s0["watchdog_kills"] == (sig == signal.SIGSTOP)
    if sig == signal.SIGSTOP and replicas == 2:
        # Found by the stall rule (~0.85 s after the stop), not by the deadline rule
        # (8.5 s): the requests caught in the stopped worker are retried on the other
        # replica long before their deadline. (The 1 s + predicted figure is measured by
        # `tidal bench overload`, not asserted here: tests do not assert wall time.)
        slow = [r.latency_ms for r in summary.results if r.latency_ms > 4000]
        assert slow == [], slow


def test_sigstopped_idle_worker_is_replaced_without_traffic(echo_gateway: GatewayProcess) -> None:
    """No request is sent: the stopped worker never holds a batch, so only the idle-replica
    liveness probe can find it (without it the victim stays a ready replica forever)."""
    gw = echo_gateway
    reset_plan(gw, 2)
    _wait_replaced(gw, -1, 2)
    gw.wait_idle()
    before = gw.stats()["echo"]
    victim = gw.worker_pids()[0]
    os.kill(victim, signal.SIGSTOP)
    try:
        _wait_replaced(gw, victim, 2, timeout_s=30)
    finally:
        if victim in gw.worker_pids():  # not replaced: let the gateway's stop reap it
            os.kill(victim, signal.SIGCONT)
    after = gw.stats()["echo"]
    assert after["watchdog_kills"] - before["watchdog_kills"] == 1
    assert after["replica_deaths"] - before["replica_deaths"] == 1
    assert after["arrivals"] == before["arrivals"]  # found without any request
