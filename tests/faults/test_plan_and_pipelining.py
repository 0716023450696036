"""Plan changes under open-loop load, and pipelined HTTP/1.1 requests.

Plan changes: replicas 2 -> 3 -> 1 -> 2 and cores 0.5 -> 0.25 -> 0.5 and the batch 8 -> 1 -> 8
while requests flow: every request is answered exactly once with its own output, none
refused, nothing orphaned; an over-capacity plan in the middle is answered 409 and not
applied. Pipelining: 50 requests written back to back on one connection are answered in
order, each with its own id and output.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import orjson
import pytest

from conftest import assert_exact, echo_config, reset_plan
from tidal.bench.checked_load import (
    Req,
    binary_request,
    make_requests,
    read_response,
    run_open_loop,
)
from tidal.bench.gateway_proc import GatewayProcess

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]


def test_plan_changes_under_load(echo_gateway: GatewayProcess) -> None:
    gw = echo_gateway
    reset_plan(gw, 2)
    before = gw.stats()
    reqs = make_requests(900, 150.0, [1, 8, 64], 5000, seed=3, prefix="plan-")
    steps = [(3, 0.5, 8), (1, 0.25, 1), (2, 0.5, 8)]
    answers: list[tuple[int, object]] = []

    def change() -> None:
        for replicas, cores, batch in steps:
            time.sleep(1.2)
            plan = echo_config(replicas, cores, batch)["plan"]
            answers.append(gw.put_plan(plan))
        over = echo_config(4, 1.0)["plan"]  # 4 cores on a 2-core capacity
        answers.append(gw.put_plan(over))

    t = threading.Thread(target=change)
    t.start()
    summary = asyncio.run(run_open_loop("127.0.0.1", gw.port, "echo", reqs))
    t.join()
    after = gw.wait_idle()
    assert [a[0] for a in answers] == [200, 200, 200, 409], answers
    assert_exact(summary, before, after)
    c = summary.counts
    assert c["ok"] + c["late"] == 900 and c["refused"] == 0 and c["expired"] == 0, c
    assert after["echo"]["replicas"] == 2 and after["echo"]["cores"] == {"noop": 0.5}


def test_pipelined_requests_answered_in_order(echo_gateway: GatewayProcess) -> None:
    gw = echo_gateway
    rng = np.random.default_rng(5)
    reqs = [
        Req(f"pipe-{i}", rng.random((1 + i % 4, 64), dtype=np.float32), 5000) for i in range(50)
    ]

    async def main() -> list[tuple[int, bytes]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"".join(binary_request("127.0.0.1", "echo", r) for r in reqs))
        await writer.drain()
        out = []
        for _ in reqs:
            status, _h, body = await asyncio.wait_for(read_response(reader), 30)
            out.append((status, body))
        writer.close()
        return out

    got = asyncio.run(main())
    for r, (status, body) in zip(reqs, got, strict=True):
        assert status == 200, body
        doc = orjson.loads(body)
        assert doc["id"] == r.rid
        y = np.asarray(doc["outputs"][0]["data"], dtype=np.float32).reshape(r.x.shape)
        np.testing.assert_array_equal(y, r.x)
