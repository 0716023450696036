"""One scheduler, two drivers: the live Gateway (real Stages, VariantGroups and GroupSchedulers,
fake executors that take a scripted time) on a SimClock, and the simulator's reference mode
(`tidal.sim.reference.ReferenceDataPlane`, noise off) on the same scripted scenario, give the
same (event, time) trace in every lane and the same outcome and end time for every request.

All times are multiples of 1/64 s (15 625 us): exact in binary floating point and in the
simulator's integer microseconds, so the comparison is exact (no tolerance). The executors
are fakes because real worker processes cannot take a scripted time; everything between the
gateway's `infer` and the executor is the production code.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import numpy as np

from tidal.config.serve import parse_serve_config
from tidal.core.clock import SimClock
from tidal.core.profile import LatencyFit, VariantProfile
from tidal.dataplane.gateway import Gateway
from tidal.dataplane.replica import Refused
from tidal.dataplane.scheduler import SchedulerConfig
from tidal.dataplane.timers import ManualTimers, inline
from tidal.sim.config import CAUSES, US
from tidal.sim.latency import NOISE_LEN, VariantLatency
from tidal.sim.reference import ReferenceDataPlane

U = 1 / 64  # s; U * 1e6 = 15 625 us
# Stage a: l(1,1) = 2U, l(2,1) = 3U. Stage b (2 cores): predicted l(1,2) = 2U, l(2,2) = 3U,
# but its batches take 1U longer (a machine slower than its profile: expiries, late answers).
FIT_A = LatencyFit(gamma=15.625, delta=0.0, epsilon=0.0, eta=15.625)
FIT_B = LatencyFit(gamma=31.25, delta=0.0, epsilon=0.0, eta=15.625)
FIT_B_ACTUAL = LatencyFit(gamma=31.25, delta=0.0, epsilon=0.0, eta=31.25)
# Hold window l(1)/2 = 1U; wake at the head's deadline (answer 504 at once), as live.
CFG = SchedulerConfig(hold_fraction=0.5, expire_timer=True)
END = 260 * U
_pids = itertools.count(50_000)


def scenario() -> list[tuple[int, float]]:
    """(arrival in units of U, slo_ms): a quiet first second (no rate estimate: dispatch
    alone), then traffic with holds, a burst (refusals, expiries) and tight SLOs."""
    rng = random.Random(5)
    out: list[tuple[int, float]] = []
    for u in range(0, 220):
        k = 3 if 120 <= u < 132 else (1 if rng.random() < 0.45 else 0)
        for _ in range(k):
            out.append((u, rng.choice([250.0, 250.0, 125.0, 93.75, 62.5])))
    return out


class ScriptedExecutor:
    """Takes exactly l(b, c) of its profile, on the scripted clock."""

    def __init__(self, fit: LatencyFit, cores: float, timers: ManualTimers) -> None:
        self.fit, self.cores, self.timers = fit, cores, timers
        self.pid = next(_pids)
        self.cold_start_s = 0.0

    async def infer_async(self, x: np.ndarray) -> np.ndarray:
        await self.timers.sleep(self.fit.latency_ms(int(x.shape[0]), self.cores) / 1000.0)
        return x

    def resize(self, cores: float) -> float:
        self.cores = cores
        return 0.0

    def stop(self) -> None:
        pass

    def alive(self) -> bool:
        return True


def config() -> Any:
    return parse_serve_config(
        {
            "pipelines": [
                {
                    "name": "p",
                    "stages": [
                        {"name": "a", "variants": ["noop"]},
                        {"name": "b", "variants": ["digits-mlp"]},
                    ],
                }
            ],
            "plan": {
                "stages": [
                    {"stage": "a", "variants": [{"name": "noop"}], "replicas": 2,
                     "cores": 1.0, "batch": 2},
                    {"stage": "b", "variants": [{"name": "digits-mlp"}], "replicas": 1,
                     "cores": 2.0, "batch": 2},
                ]
            },
        }
    )  # fmt: skip


Trace = list[tuple[str, float, tuple[int, ...]]]


def run_live() -> tuple[list[Trace], dict[int, tuple[str, int]]]:
    async def main() -> tuple[list[Trace], dict[int, tuple[str, int]]]:
        clock = SimClock()
        timers = ManualTimers(clock)
        fits = {"noop": FIT_A, "digits-mlp": FIT_B}
        actual = {"noop": FIT_A, "digits-mlp": FIT_B_ACTUAL}

        def factory(variant: str, cores: float) -> ScriptedExecutor:
            return ScriptedExecutor(actual[variant], cores, timers)

        gw = Gateway(
            config(),
            clock=clock,
            factory=factory,
            fits=fits,
            scheduler=CFG,
            timers=timers,
            offload=inline,
        )
        await gw.start()
        lanes = [gw.stages["a"].groups["noop"].sched, gw.stages["b"].groups["digits-mlp"].sched]
        for s in lanes:
            s.trace = []
        outcomes: dict[int, tuple[str, int]] = {}
        tasks: list[asyncio.Task[None]] = []
        x = np.zeros((1, 64), dtype=np.float32)

        async def one(i: int, slo: float) -> None:
            try:
                r = await gw.infer("p", x, slo)
                outcomes[i] = ("late" if r.late else "ok", round(clock.now() * US))
            except Refused as e:
                outcomes[i] = (e.cause, round(clock.now() * US))

        for i, (u, slo) in enumerate(scenario()):
            timers.call_at(
                u * U,
                lambda i=i, slo=slo: tasks.append(asyncio.ensure_future(one(i, slo))),  # type: ignore[misc]
                last=True,  # arrivals after the completions and timers due at the same time
            )
        await timers.run_until(END)
        await asyncio.gather(*tasks)
        traces = [list(s.trace or []) for s in lanes]
        await gw.stop()
        # Gateway ids count from 1, the simulator's from 0.
        return [[(e, t, tuple(i - 1 for i in ids)) for e, t, ids in tr] for tr in traces], outcomes

    return asyncio.run(main())


def run_sim() -> tuple[list[Trace], dict[int, tuple[str, int]]]:
    lat_a = VariantLatency(VariantProfile(name="noop", accuracy=1.0, fit=FIT_A))
    lat_b = VariantLatency(VariantProfile(name="digits-mlp", accuracy=1.0, fit=FIT_B))
    act_b = VariantLatency(VariantProfile(name="digits-mlp", accuracy=1.0, fit=FIT_B_ACTUAL))
    dp = ReferenceDataPlane(
        [[(lat_a, 1.0)], [(act_b, 1.0)]],
        np.ones((2, NOISE_LEN)),
        predict=[[lat_a], [lat_b]],
        scheduler=CFG,
    )
    dp.set_lane(0, 0, 2, 1.0)
    dp.set_lane(1, 0, 2, 1.0)
    dp.add_replica(1, 0, 0, 1.0)
    dp.add_replica(2, 0, 0, 1.0)
    dp.add_replica(1001, 1, 0, 2.0)
    dp.set_head(0, 0, 1.0)
    dp.set_head(1, 0, 2.0)
    lanes = [dp.stages[0][0].sched, dp.stages[1][0].sched]
    for s in lanes:
        s.trace = []
    dp.kick(0)
    sc = scenario()
    a = np.array([round(u * U * US) for u, _ in sc], dtype=np.int64)
    d = a + np.array([round(slo * 1000) for _, slo in sc], dtype=np.int64)
    dp.feed(a, d, 1 << 62)
    dp.run_until(round(END * US))
    outcomes = {r[0]: (CAUSES[r[4]], r[3]) for r in dp.drain()}
    traces = [list(s.trace or []) for s in lanes]
    # The live stage-b replica is r1 of its group; the simulator numbers replicas globally.
    traces[1] = [(e.replace("/r1001", "/r1"), t, ids) for e, t, ids in traces[1]]
    return traces, outcomes


def first_diff(a: Trace, b: Trace) -> tuple[int, object, object]:
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else None
        y = b[i] if i < len(b) else None
        if x != y:
            return i, x, y
    return -1, None, None


def test_live_gateway_and_simulator_give_the_same_trace() -> None:
    live_tr, live_out = run_live()
    sim_tr, sim_out = run_sim()
    n = len(scenario())
    assert sorted(sim_out) == list(range(n)) and sorted(live_out) == list(range(n))
    for lane in (0, 1):
        assert live_tr[lane] == sim_tr[lane], (
            f"lane {lane}: first difference at {first_diff(live_tr[lane], sim_tr[lane])}"
        )
    assert live_out == sim_out
    # The scenario exercises what the trace is about.
    events = {e.split("/")[0] for tr in sim_tr for e, _, _ in tr}
    assert {"admit", "dispatch", "done", "wait", "refuse", "expire"} <= events, events
    causes = {c for c, _ in sim_out.values()}
    assert {"ok", "late", "refused", "expired"} <= causes, causes
    assert any(len(ids) == 2 for e, _, ids in sim_tr[0] if e.startswith("dispatch"))
    assert {e for e, _, _ in sim_tr[0] if e.startswith("dispatch")} == {
        "dispatch/r1",
        "dispatch/r2",
    }
