"""Real worker processes: scale one stage 1 -> 3 -> 1 replicas and 1 -> 2 -> 0.5 cores under
continuous load. Every accepted request gets exactly one answer with its own output; none is
lost or duplicated. Resizes happen in place (same PIDs)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from tidal.config.serve import parse_serve_config
from tidal.core import Plan
from tidal.dataplane.gateway import Gateway
from tidal.dataplane.replica import Refused


def _pids(gw: Gateway) -> set[int]:
    return {r.pid for r in gw.stages["echo"].replicas() if r.state == "ready" and r.pid}


def test_scale_out_in_and_resize_under_load() -> None:
    cfg = parse_serve_config(
        {
            "models": [{"name": "echo", "variants": ["noop"]}],
            "default_slo_ms": 10_000,
            "plan": Plan.single("echo", "noop", 1, 1.0, 8).model_dump(),
        }
    )

    async def main() -> None:
        gw = Gateway(cfg)
        await gw.start()
        answers: dict[int, list[Any]] = {}
        sent: list[int] = []
        reasons: list[str] = []
        stop = asyncio.Event()

        async def client(k: int) -> None:
            i = 0
            while not stop.is_set():
                rid = k * 1_000_000 + i
                i += 1
                x = np.full((1, 64), float(rid), dtype=np.float32)
                sent.append(rid)
                try:
                    r = await gw.infer("echo", x)
                    answers.setdefault(rid, []).append(float(r.output[0, 0]))
                except Refused as e:
                    answers.setdefault(rid, []).append(f"status {e.status}")
                    reasons.append(e.reason)
                    await asyncio.sleep(0.005)

        clients = [asyncio.ensure_future(client(k)) for k in range(4)]
        await asyncio.sleep(0.3)
        first = _pids(gw)
        assert len(first) == 1
        seen_replicas = []
        for reps in (3, 1):
            await gw.apply_plan(Plan.single("echo", "noop", reps, 1.0, 8))
            await asyncio.sleep(0.4)
            seen_replicas.append(gw.metrics_snapshot()["echo"].replicas)
        survivors = _pids(gw)
        seen_cores = []
        for cores in (2.0, 0.5):
            await gw.apply_plan(Plan.single("echo", "noop", 1, cores, 8))
            await asyncio.sleep(0.4)
            assert _pids(gw) == survivors  # vertical scaling in place: same process
            seen_cores.append(gw.metrics_snapshot()["echo"].total_cores)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*clients), timeout=60)
        snap = gw.metrics_snapshot()["echo"]
        cold = gw.stages["echo"].counters.cold_start.n
        resizes = gw.stages["echo"].counters.resize.n
        await gw.stop()

        assert seen_replicas == [3, 1]
        assert seen_cores == [2.0, 0.5]
        assert cold == 3 and resizes >= 2
        assert set(answers) == set(sent)  # none lost
        assert all(len(v) == 1 for v in answers.values())  # none duplicated
        ok = {rid: v[0] for rid, v in answers.items() if isinstance(v[0], float)}
        assert all(v == float(rid) for rid, v in ok.items())  # each got its own answer
        assert len(ok) == len(answers) > 100, reasons  # generous SLO: nothing refused
        assert snap.completions == len(ok) and snap.violations["error"] == 0

    asyncio.run(main())
