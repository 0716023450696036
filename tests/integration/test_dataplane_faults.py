"""Real worker processes killed with SIGKILL mid-batch: every request of the batch is retried
on another replica within its deadline, or answered 5xx with a reason; none hangs; the replica
is replaced by a new process."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import numpy as np

from tidal.config.serve import parse_serve_config
from tidal.core import Plan
from tidal.dataplane.gateway import Gateway
from tidal.dataplane.replica import Refused

ROWS = 256  # rows per request: makes a batch last long enough to be killed mid-way


def _gw(replicas: int, slo_ms: float, max_retries: int = 2) -> Gateway:
    cfg = parse_serve_config(
        {
            "models": [{"name": "cnn", "variants": ["digits-cnn"]}],
            "default_slo_ms": slo_ms,
            "max_retries": max_retries,
            "plan": Plan.single("cnn", "digits-cnn", replicas, 1.0, 4).model_dump(),
        }
    )
    return Gateway(cfg)


async def _kill_mid_batch(gw: Gateway) -> int:
    """SIGKILL the first replica seen running a batch; its pid."""
    for _ in range(20_000):
        for r in gw.stages["cnn"].replicas():
            if r.busy and r.pid:
                # Freeze it first so the batch cannot finish in the meantime, then kill it.
                os.kill(r.pid, signal.SIGSTOP)
                await asyncio.sleep(0.02)
                os.kill(r.pid, signal.SIGKILL)
                return r.pid
        await asyncio.sleep(0.0005)
    raise AssertionError("no replica ever became busy")


async def _wait_replicas(gw: Gateway, n: int, timeout: float = 120.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if gw.metrics_snapshot()["cnn"].replicas == n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"replicas never came back to {n}")


def test_sigkill_mid_batch_retries_on_other_replica_and_replaces() -> None:
    x = np.random.default_rng(0).random((ROWS, 64), dtype=np.float32)

    async def main() -> None:
        gw = _gw(2, 20_000)
        await gw.start()
        ref = (await gw.infer("cnn", x)).output
        before = {r.pid for r in gw.stages["cnn"].replicas()}
        tasks = [asyncio.ensure_future(gw.infer("cnn", x)) for _ in range(12)]
        victim = await _kill_mid_batch(gw)
        out: list[Any] = await asyncio.wait_for(
            asyncio.gather(*tasks, return_exceptions=True), timeout=60
        )
        for o in out:  # each answered: a correct result, or a 5xx with a reason
            if isinstance(o, Refused):
                assert o.status >= 500 and o.reason
            else:
                assert not isinstance(o, BaseException), o
                np.testing.assert_allclose(o.output, ref, rtol=1e-4, atol=1e-4)
        assert sum(not isinstance(o, BaseException) for o in out) == 12  # all retried in time
        await _wait_replicas(gw, 2)
        after = {r.pid for r in gw.stages["cnn"].replicas()}
        snap = gw.metrics_snapshot()["cnn"]
        await gw.stop()
        assert victim in before and victim not in after and len(after - before) == 1
        assert snap.replica_deaths == 1

    asyncio.run(main())


def test_sigkill_without_retry_answers_5xx_with_reason_and_replaces() -> None:
    x = np.random.default_rng(1).random((4 * ROWS, 64), dtype=np.float32)

    async def main() -> None:
        # No retry allowed: the killed batch's requests must be answered 502 at once; the
        # ones still queued are served by the replacement (or expire: 504), none hangs.
        gw = _gw(1, 20_000, max_retries=0)
        await gw.start()
        await gw.infer("cnn", x)
        tasks = [asyncio.ensure_future(gw.infer("cnn", x)) for _ in range(4)]
        victim = await _kill_mid_batch(gw)
        out: list[Any] = await asyncio.wait_for(
            asyncio.gather(*tasks, return_exceptions=True), timeout=60
        )
        failed = [o for o in out if isinstance(o, Refused)]
        assert failed and all(o.status == 502 and "died mid-batch" in o.reason for o in failed)
        assert all(isinstance(o, Refused) or not isinstance(o, BaseException) for o in out)
        await _wait_replicas(gw, 1)
        assert victim not in {r.pid for r in gw.stages["cnn"].replicas()}
        r = await gw.infer("cnn", x)  # the replacement serves
        assert r.output.shape == (4 * ROWS, 10)
        assert gw.metrics_snapshot()["cnn"].violations["error"] == len(failed)
        await gw.stop()

    asyncio.run(main())
