"""The live data plane (Gateway, stages, groups, schedulers) on in-process fake executors.

Behaviour only: EDF order under per-request SLOs, admission refusal, expiry, serve-late,
plans (idempotent, weights, scale in/out, resize), worker death. Every test runs the gateway
on a SimClock: its timers and the fake executors' service times are on `ManualTimers`, so the
order of events is scripted and never depends on this machine's load (no test sleeps). Real
worker processes are exercised in tests/integration/test_dataplane_*.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from dataplane_fakes import FakeFactory

from tidal.config.serve import parse_serve_config
from tidal.core import Plan, StagePlan, VariantWeight
from tidal.core.clock import SimClock
from tidal.core.errors import TidalError
from tidal.dataplane.gateway import Gateway
from tidal.dataplane.replica import Refused
from tidal.dataplane.timers import ManualTimers, inline


def _gw(fac: FakeFactory, **cfg: Any) -> Gateway:
    raw = {
        "models": [{"name": "m", "variants": ["digits-mlp", "digits-linear"]}],
        "plan": {
            "stages": [
                {"stage": "m", "variants": [{"name": "digits-mlp"}], "replicas": 1,
                 "cores": 1.0, "batch": cfg.pop("batch", 8)}
            ]
        },
        **cfg,
    }  # fmt: skip
    config = parse_serve_config(raw)
    fit = fac.fit()
    clock = SimClock()
    fac.timers = ManualTimers(clock)
    return Gateway(
        config,
        factory=fac,
        fits={"digits-mlp": fit, "digits-linear": fit},
        clock=clock,
        timers=fac.timers,
        offload=inline,
    )


def _timers(fac: FakeFactory) -> ManualTimers:
    assert fac.timers is not None
    return fac.timers


async def advance(fac: FakeFactory, dt: float) -> None:
    """Let `dt` seconds of the scripted clock pass (timers fire in order)."""
    t = _timers(fac)
    await t.run_until(t.clock.now() + dt)


async def finish(fac: FakeFactory, *aws: Any, return_exceptions: bool = False) -> list[Any]:
    """Run the scripted clock until every awaitable is done; their results in order."""
    t = _timers(fac)
    tasks = [asyncio.ensure_future(a) for a in aws]
    while not all(x.done() for x in tasks):
        nt = t.next_time()
        if nt is None:
            await t.settle()
            assert all(x.done() for x in tasks), "stuck: nothing left to fire"
            break
        await t.run_until(nt)
    return list(await asyncio.gather(*tasks, return_exceptions=return_exceptions))


def _x(v: float) -> np.ndarray:
    return np.full((1, 64), v, dtype=np.float32)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_tighter_later_request_is_served_first() -> None:
    fac = FakeFactory(base=0.03, per_item=0.0)

    async def main() -> list[float]:
        gw = _gw(fac, batch=1)
        await gw.start()
        first = asyncio.ensure_future(gw.infer("m", _x(0), 1000))  # occupies the replica
        await advance(fac, 0.005)
        loose = asyncio.ensure_future(gw.infer("m", _x(1), 1000))
        await advance(fac, 0.001)
        tight = asyncio.ensure_future(gw.infer("m", _x(2), 200))  # later, tighter budget
        await finish(fac, first, loose, tight)
        await gw.stop()
        return [float(b[0, 0]) for b in fac.started[0].seen]

    assert run(main()) == [0.0, 2.0, 1.0]


def test_admission_refuses_with_reason_and_retry_after() -> None:
    fac = FakeFactory(base=0.05, per_item=0.0)

    async def main() -> tuple[int, list[Refused]]:
        gw = _gw(fac, batch=1)
        await gw.start()
        out = await finish(
            fac, *(gw.infer("m", _x(i), 120) for i in range(6)), return_exceptions=True
        )
        snap = gw.metrics_snapshot()["m"]
        await gw.stop()
        ok = sum(1 for o in out if not isinstance(o, BaseException))
        assert snap.violations["refused"] == 6 - ok
        assert snap.arrivals == 6 and snap.completions == ok
        return ok, [o for o in out if isinstance(o, Refused)]

    ok, refused = run(main())
    # 50 ms per batch of 1, 120 ms budget: the first two fit, the rest are refused at once
    assert ok == 2 and len(refused) == 4
    assert all(r.status == 503 and r.cause == "refused" for r in refused)
    assert all(r.retry_after_s is not None and r.retry_after_s > 0 for r in refused)
    assert "exceeds the budget" in refused[0].reason


def test_expiry_answers_504_without_processing() -> None:
    fac = FakeFactory(base=0.08, per_item=0.0)

    async def main() -> tuple[list[Any], int]:
        # margin 0.1 makes admission optimistic, so requests are accepted and then expire
        gw = _gw(fac, batch=1, admission_margin=0.1)
        await gw.start()
        out = await finish(
            fac, *(gw.infer("m", _x(i), 100) for i in range(3)), return_exceptions=True
        )
        snap = gw.metrics_snapshot()["m"]
        await gw.stop()
        return out, snap.violations["expired"]

    out, expired = run(main())
    # r0 runs 0-80 ms; r1 and r2 could start at 80 ms but not finish by 100 ms: 504 at
    # dispatch (`expire_hopeless`), never processed
    assert not out[0].late
    assert all(isinstance(o, Refused) and o.status == 504 for o in out[1:])
    assert all("cannot finish by its deadline" in o.reason for o in out[1:])
    assert expired == 2
    assert fac.started[0].batches == [1]


def test_serve_late_serves_everything_and_counts_late() -> None:
    fac = FakeFactory(base=0.05, per_item=0.0)

    async def main() -> tuple[list[Any], dict[str, int]]:
        gw = _gw(fac, batch=1, serve_late=True)
        await gw.start()
        out = await finish(fac, *(gw.infer("m", _x(i), 60) for i in range(4)))
        snap = gw.metrics_snapshot()["m"]
        await gw.stop()
        return out, snap.violations

    out, viol = run(main())
    assert len(out) == 4 and sum(o.late for o in out) == 3
    assert viol == {"late": 3, "refused": 0, "expired": 0, "error": 0}


def test_batches_form_under_load_and_respect_max_batch() -> None:
    fac = FakeFactory(base=0.01, per_item=0.0005)

    async def main() -> list[int]:
        gw = _gw(fac, batch=4)
        await gw.start()
        out = await finish(fac, *(gw.infer("m", _x(i), 500) for i in range(20)))
        await gw.stop()
        assert [float(o.output[0, 0]) for o in out] == [2.0 * i for i in range(20)]
        return fac.started[0].batches

    batches = run(main())
    assert sum(batches) == 20 and max(batches) == 4 and batches[0] == 1


def test_plan_apply_idempotent_scale_resize_and_unknown() -> None:
    fac = FakeFactory()

    async def main() -> None:
        gw = _gw(fac)
        await gw.start()
        p3 = Plan.single("m", "digits-mlp", replicas=3, cores=2.0, batch=4)
        await gw.apply_plan(p3)
        await gw.apply_plan(p3)  # idempotent: no extra replicas
        assert len(fac.started) == 3
        snap = gw.metrics_snapshot()["m"]
        assert (snap.replicas, snap.total_cores, snap.batch) == (3, 6.0, 4)
        await advance(fac, 0.01)
        assert fac.started[0].resizes == [2.0]  # resized in place, same executor
        await gw.apply_plan(Plan.single("m", "digits-mlp", replicas=1, cores=0.5, batch=2))
        await advance(fac, 0.01)
        assert gw.metrics_snapshot()["m"].replicas == 1
        assert sum(ex.alive() for ex in fac.started) == 1
        assert gw.current_plan() == Plan.single("m", "digits-mlp", 1, 0.5, 2)
        with pytest.raises(TidalError, match="unknown stage"):
            await gw.apply_plan(Plan.single("nope", "digits-mlp", 1, 1.0, 1))
        with pytest.raises(TidalError, match="cannot run variant"):
            await gw.apply_plan(Plan.single("m", "resnet18", 1, 1.0, 1))
        await gw.stop()

    run(main())


def test_weighted_variants_split_traffic() -> None:
    fac = FakeFactory(base=0.001, per_item=0.0)

    async def main() -> dict[str, int]:
        gw = _gw(fac)
        await gw.start()
        plan = Plan(
            stages=(
                StagePlan(
                    stage="m",
                    variants=(
                        VariantWeight(name="digits-mlp", weight=0.75),
                        VariantWeight(name="digits-linear", weight=0.25),
                    ),
                    replicas=1,
                    cores=1.0,
                    batch=1,
                ),
            )
        )
        await gw.apply_plan(plan)
        counts: dict[str, int] = {}
        for i in range(40):
            (r,) = await finish(fac, gw.infer("m", _x(i), 500))
            counts[r.variants[0]] = counts.get(r.variants[0], 0) + 1
        await gw.stop()
        return counts

    assert run(main()) == {"digits-mlp": 30, "digits-linear": 10}


def test_worker_death_mid_batch_retries_on_another_replica() -> None:
    fac = FakeFactory(base=0.05, per_item=0.0)

    async def main() -> None:
        gw = _gw(fac, batch=4)
        await gw.start()
        await gw.apply_plan(Plan.single("m", "digits-mlp", replicas=2, cores=1.0, batch=4))
        tasks = [asyncio.ensure_future(gw.infer("m", _x(i), 1000)) for i in range(8)]
        await advance(fac, 0.02)
        victim = next(ex for ex in fac.started if ex.batches)
        victim.kill()
        out = await finish(fac, *tasks)
        assert [float(o.output[0, 0]) for o in out] == [2.0 * i for i in range(8)]
        await advance(fac, 0.02)
        snap = gw.metrics_snapshot()["m"]
        assert snap.replica_deaths == 1 and snap.replicas == 2  # replaced
        assert len(fac.started) == 3 and snap.completions == 8
        await gw.stop()

    run(main())


def test_death_without_time_left_answers_5xx() -> None:
    fac = FakeFactory(base=0.05, per_item=0.0)

    async def main() -> None:
        gw = _gw(fac, batch=4, max_retries=0)
        await gw.start()
        task = asyncio.ensure_future(gw.infer("m", _x(1), 1000))
        await advance(fac, 0.01)
        fac.started[0].kill()
        with pytest.raises(Refused) as e:
            await finish(fac, task)
        assert e.value.status == 502 and "died" in e.value.reason
        assert gw.metrics_snapshot()["m"].violations["error"] == 1
        await gw.stop()

    run(main())


def test_scale_in_keeps_every_request() -> None:
    fac = FakeFactory(base=0.004, per_item=0.0005)

    async def main() -> None:
        gw = _gw(fac, batch=4)
        await gw.start()
        stop = False
        results: list[Any] = []

        async def client(k: int) -> None:
            i = 0
            while not stop:
                try:
                    r = await gw.infer("m", _x(k * 1000 + i), 2000)
                    results.append((k * 1000 + i, float(r.output[0, 0])))
                except Refused as e:
                    results.append((k * 1000 + i, e.status))
                    await _timers(fac).sleep(0.001)  # a refused client backs off
                i += 1

        clients = [asyncio.ensure_future(client(k)) for k in range(6)]
        for reps, cores in [(3, 1.0), (1, 1.0), (1, 2.0), (1, 0.5), (2, 0.5), (0, 0.5)]:
            await gw.apply_plan(Plan.single("m", "digits-mlp", reps, cores, 4))
            await advance(fac, 0.05)
        await gw.apply_plan(Plan.single("m", "digits-mlp", 1, 1.0, 4))
        await advance(fac, 0.05)
        stop = True
        await finish(fac, *clients)
        snap = gw.metrics_snapshot()["m"]
        await gw.stop()
        ids = [i for i, _ in results]
        assert len(ids) == len(set(ids))
        answered = [v for _, v in results if isinstance(v, float)]
        assert snap.completions == len(answered) > 50
        assert all(v == 2.0 * i for i, v in results if isinstance(v, float))

    run(main())


def test_snapshot_counts_in_flight_and_busy_core_seconds() -> None:
    fac = FakeFactory(base=0.05, per_item=0.0)

    async def main() -> None:
        gw = _gw(fac, batch=4)
        await gw.start()
        await gw.apply_plan(Plan.single("m", "digits-mlp", 1, 2.0, 4))
        tasks = [asyncio.ensure_future(gw.infer("m", _x(i), 1000)) for i in range(3)]
        await advance(fac, 0.02)
        mid = gw.metrics_snapshot()["m"]
        assert mid.in_flight + mid.queue_len == 3 and mid.in_flight >= 1
        await finish(fac, *tasks)
        end = gw.metrics_snapshot()["m"]
        await gw.stop()
        assert end.in_flight == 0 and end.completions == 3
        assert end.busy_core_s == pytest.approx(2.0 * end.busy_s)
        # busy time is whole 50 ms batches: one batch of 3 when the three arrivals ride one
        # dispatch decision (one per loop iteration), or a batch of 1 and then one of 2
        assert any(end.busy_s == pytest.approx(0.05 * k) for k in (1, 2)), end.busy_s

    run(main())


def test_liveness_sweep_replaces_an_idle_dead_replica_on_the_sim_clock() -> None:
    from tidal.core.clock import SimClock
    from tidal.dataplane.timers import ManualTimers, inline

    fac = FakeFactory()

    async def main() -> None:
        clock = SimClock()
        timers = ManualTimers(clock)
        raw = {
            "models": [{"name": "m", "variants": ["digits-mlp"]}],
            "plan": {"stages": [{"stage": "m", "variants": [{"name": "digits-mlp"}],
                                 "replicas": 1, "cores": 1.0, "batch": 8}]},
        }  # fmt: skip
        gw = Gateway(
            parse_serve_config(raw),
            clock=clock,
            factory=fac,
            fits={"digits-mlp": fac.fit()},
            timers=timers,
            offload=inline,
        )
        await gw.start()
        assert len(fac.started) == 1
        fac.started[0]._dead = True  # the worker exits while idle: no batch will notice
        await timers.run_until(0.9)
        assert len(fac.started) == 1  # the sweep runs once a second
        await timers.run_until(1.0)
        assert len(fac.started) == 2 and gw.stages["m"].counters.replica_deaths == 1
        (rep,) = gw.stages["m"].replicas()
        assert rep.state == "ready" and rep.executor is fac.started[1]
        await gw.stop()

    run(main())


def test_deadline_counts_from_the_given_arrival() -> None:
    fac = FakeFactory(base=0.08, per_item=0.0)

    async def main() -> tuple[Any, Any]:
        gw = _gw(fac, batch=1)
        await gw.start()
        await advance(fac, 1.0)
        now = _timers(fac).clock.now()
        # The body took 100 ms to read and parse: 50 ms of a 150 ms budget are left, < 80 ms.
        late = await finish(
            fac, gw.infer("m", _x(1), 150, arrival=now - 0.1), return_exceptions=True
        )
        ok = await finish(fac, gw.infer("m", _x(2), 150))
        await gw.stop()
        return late[0], ok[0]

    late, ok = run(main())
    assert isinstance(late, Refused) and late.status == 503
    assert not ok.late and ok.total_ms == pytest.approx(80.0)


def test_core_seconds_count_starting_replicas() -> None:
    """A replica holds its cores while its worker starts (2 s here), as a simulated one
    does (tidal.sim.actuator): core-seconds are 1 ready + 2 starting cores, then 3 ready."""
    fac = FakeFactory(base=0.01, per_item=0.0)
    clock = SimClock()
    fac.timers = ManualTimers(clock)

    async def slow_start(fn: Any, *args: Any) -> Any:
        if fn is fac:  # a worker start takes 2 s of the scripted clock
            await _timers(fac).sleep(2.0)
        return fn(*args)

    raw = {
        "models": [{"name": "m", "variants": ["digits-mlp"]}],
        "plan": {"stages": [{"stage": "m", "variants": [{"name": "digits-mlp"}],
                             "replicas": 1, "cores": 1.0, "batch": 1}]},
    }  # fmt: skip
    gw = Gateway(
        parse_serve_config(raw),
        factory=fac,
        fits={"digits-mlp": fac.fit()},
        clock=clock,
        timers=fac.timers,
        offload=slow_start,
    )

    async def main() -> tuple[float, float, float]:
        started = asyncio.ensure_future(gw.start())
        await _timers(fac).settle()  # the first worker's start is under way
        await finish(fac, started)
        c0 = gw.metrics_snapshot()["m"].core_s
        grow = asyncio.ensure_future(gw.apply_plan(Plan.single("m", "digits-mlp", 2, 1.0, 1)))
        await advance(fac, 1.0)
        starting = gw.metrics_snapshot()["m"]
        await finish(fac, grow)
        await advance(fac, 2.0)
        c2 = gw.metrics_snapshot()["m"].core_s
        assert starting.starting == 1 and starting.replicas == 1
        await gw.stop()
        return c0, starting.core_s, c2

    c0, c1, c2 = run(main())
    assert c1 - c0 == pytest.approx(2.0)
    assert c2 - c0 == pytest.approx(2.0 + 1.0 * 2 + 2.0 * 2)
