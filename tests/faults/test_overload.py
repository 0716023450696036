"""2x and 10x overload of a lane whose cost is linear in rows (digits-cnn, 1- and 1024-row
requests mixed): what cannot finish in time is refused at arrival (503 with a reason and a
Retry-After, decided by admission, most at the request's headers before its body is read),
not left to expire; every request is answered once with its own output; the client's and the
server's counts agree exactly; nothing is left queued or running. The measured shares and
latencies (wall time) are `tidal bench overload`'s job, not this test's."""

from __future__ import annotations

import asyncio

import pytest

from tidal.bench.checked_load import run_open_loop
from tidal.bench.gateway_proc import GatewayProcess
from tidal.bench.overload import BIG, ModelOracle, closed_loop_rows_per_s

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]
LOAD_S = 4.0  # seconds of open-loop load per level
ONSET_S = 1.5  # the overload's onset: the lane is still learning the speed under it


@pytest.mark.parametrize(("level", "slo_ms"), [(2.0, 100.0), (10.0, 2000.0)])
def test_overload_is_refused_at_arrival(
    cnn_gateway: GatewayProcess, cnn_oracle: ModelOracle, level: float, slo_ms: float
) -> None:
    gw, oracle = cnn_gateway, cnn_oracle
    cap = asyncio.run(closed_loop_rows_per_s(gw.port, oracle, 1.5, clients=2))
    rate = level * cap / (0.5 * (1 + BIG))
    n = max(40, int(rate * LOAD_S))
    reqs = oracle.requests(n, rate, slo_ms, 0.5, seed=int(level), prefix=f"o{level:g}-")
    before = gw.stats()["m"]
    gw.refusals(reset=True)
    summary = asyncio.run(
        run_open_loop("127.0.0.1", gw.port, "m", reqs, oracle, timeout_s=30, slo_header=True)
    )
    after = gw.wait_idle()["m"]
    c = summary.counts
    assert c["wrong"] == 0 and c["lost"] == 0 and c["error"] == 0, c
    assert c["refused"] > 0, c  # it really was overloaded
    # Refused at arrival, not expired: every 503 was decided by admission (at the headers,
    # after the body, or in the scheduler), and with the deadline in a header most at the
    # headers, before the body was read
    refused = [r for r in summary.results if r.outcome == "refused"]
    where = gw.refusals()["counts"]
    assert sum(where.values()) == c["refused"], (where, c)
    assert where["headers"] > 0, where
    assert all(r.retry_after is not None and int(r.retry_after) >= 1 for r in refused)
    assert all(r.cause == "refused" and r.reason for r in refused)
    # ... and expiries stay rare: the bar is <= 2% of all requests, which
    # `tidal bench overload` measures over 20 s; here, on a shared machine whose load moves
    # the service time under the test, refusals must outnumber expiries 5 to 1 overall, and
    # under sustained overload (arrivals after the onset, when the lane has measured the
    # speed it serves at under this load: what admission can be held to) expiries stay
    # under 5%. Without row admission both fail by far (most requests expire).
    assert c["refused"] >= 5 * c["expired"], c
    onset = {r.rid for r in reqs if r.send_at < ONSET_S}
    held = [r for r in summary.results if r.rid not in onset]
    expired = sum(1 for r in held if r.outcome == "expired")
    assert expired <= max(3, 0.05 * len(held)), (expired, len(held), c)
    # Exact books: server and client agree, nothing left behind.
    d = {k: after[k] - before[k] for k in ("arrivals", "completions")}
    v = {k: after["violations"][k] - before["violations"][k] for k in ("refused", "expired")}
    assert d["arrivals"] == n and d["completions"] == c["ok"] + c["late"], (d, c)
    assert v == {"refused": c["refused"], "expired": c["expired"]}, (v, c)
    assert after["queue_len"] == 0 and after["in_flight"] == 0
