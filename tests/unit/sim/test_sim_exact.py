"""Exact (event, time) traces of small hand-made scenarios on the reference data plane, which
drives the data plane's own GroupScheduler (queue, batcher, admission: imported, not copied)."""

from __future__ import annotations

import numpy as np

from tidal.core.profile import LatencyFit, VariantProfile
from tidal.dataplane.edf import EDFQueue
from tidal.dataplane.scheduler import GroupScheduler
from tidal.sim import reference
from tidal.sim.config import LATE, OK, REFUSED, sim_scheduler
from tidal.sim.latency import NOISE_LEN, VariantLatency
from tidal.sim.reference import INF, ReferenceDataPlane

# l(b, c) = 10*b/c + 5 ms: l(1,1) = 15 ms, l(2,1) = 25 ms, l(1,2) = 10 ms.
FIT = LatencyFit(gamma=10.0, delta=0.0, epsilon=0.0, eta=5.0)
PROFILE = VariantProfile(name="v", accuracy=0.5, fit=FIT)


def plane(
    admit: bool = False, batch: int = 2, cores: tuple[float, ...] = (1.0,)
) -> ReferenceDataPlane:
    dp = ReferenceDataPlane(
        [[(VariantLatency(PROFILE), 0.5)]],
        np.ones((1, NOISE_LEN)),
        scheduler=sim_scheduler(admission=admit),
    )
    dp.events = []
    dp.set_lane(0, 0, batch, 1.0)
    for i, c in enumerate(cores):
        dp.add_replica(i, 0, 0, c)
    return dp


def run(dp: ReferenceDataPlane, arr_us: list[int], slo_us: int, until: int) -> dict[int, tuple]:
    a = np.array(arr_us, dtype=np.int64)
    dp.feed(a, a + slo_us, INF)
    dp.run_until(until)
    return {r[0]: (r[3], r[4]) for r in dp.drain()}


def test_reference_mode_uses_the_dataplane_objects() -> None:
    assert reference.GroupScheduler is GroupScheduler
    # No copy of the queue, batcher, admission or rate logic lives in the simulator.
    for name in ("EDFQueue", "batcher", "admission", "decide", "admit"):
        assert not hasattr(reference, name), name
    dp = plane()
    assert isinstance(dp.stages[0][0].sched, GroupScheduler)
    assert isinstance(dp.stages[0][0].queue, EDFQueue)


def test_three_requests_batch_two_exact_trace() -> None:
    dp = plane()
    out = run(dp, [0, 1000, 2000], slo_us=1_000_000, until=1_000_000)
    # t=0: no rate estimate yet -> the batcher dispatches req 0 alone (15 ms); reqs 1 and 2
    # queue behind the busy replica; at 15 ms the batch is full (2) -> 25 ms more.
    assert dp.events == [
        ("arrive@0", 0, (0,)),
        ("dispatch@0/r0", 0, (0,)),
        ("arrive@0", 1000, (1,)),
        ("arrive@0", 2000, (2,)),
        ("ok", 15000, (0,)),
        ("dispatch@0/r0", 15000, (1, 2)),
        ("ok", 40000, (1,)),
        ("ok", 40000, (2,)),
    ]
    assert out == {0: (15000, OK), 1: (40000, OK), 2: (40000, OK)}


def test_batcher_waits_for_company_then_dispatches_a_full_batch() -> None:
    # 8 cores: l(1) = 6.25 ms, l(2) = 7.5 ms. 180 arrivals in second 0 (every 5 ms) give the
    # lane a rate of 180 req/s in second 1. At 1.000 s one request finds an idle replica:
    # n/l(n) = 160/s < 180/s (batching is needed), so the batcher waits until the batch of 2
    # fills: 1 s + 1/180 s -> timer at ceil(1005555.6) us. The next arrival (1.003 s) fills the
    # batch, which is dispatched at once and completes 7.5 ms later.
    dp = plane(batch=2, cores=(8.0,))
    first = list(range(0, 900_000, 5000))
    out = run(dp, [*first, 1_000_000, 1_003_000], slo_us=10_000_000, until=3_000_000)
    assert len(out) == 182 and all(c == OK for _, c in out.values())
    assert dp.events is not None
    i = dp.events.index(("arrive@0", 1_000_000, (180,)))
    assert dp.events[i : i + 6] == [
        ("arrive@0", 1_000_000, (180,)),
        ("wait@0", 1_005_556, ()),
        ("arrive@0", 1_003_000, (181,)),
        ("dispatch@0/r0", 1_003_000, (180, 181)),
        ("ok", 1_010_500, (180,)),
        ("ok", 1_010_500, (181,)),
    ]


def test_admission_refuses_what_cannot_make_it_and_late_is_recorded() -> None:
    dp = plane(admit=True, batch=1)
    # SLO 20 ms: req 0 (15 ms) fits; req 1 at 1 ms would finish at 30 ms > 21 ms: refused.
    out = run(dp, [0, 1000], slo_us=20_000, until=100_000)
    assert out == {0: (15000, OK), 1: (1000, REFUSED)}
    dp2 = plane(admit=False, batch=1)
    out2 = run(dp2, [0, 1000], slo_us=20_000, until=100_000)
    assert out2 == {0: (15000, OK), 1: (30000, LATE)}


def test_expired_requests_are_dropped_from_the_queue() -> None:
    dp = plane(admit=False, batch=1)
    # SLO 10 ms: req 0 runs 15 ms (late); req 1 (deadline 11 ms) expires in the queue at 15 ms.
    out = run(dp, [0, 1000], slo_us=10_000, until=100_000)
    assert out[0] == (15000, LATE)
    assert out[1] == (15000, 3)


def test_route_to_the_replica_with_most_cores() -> None:
    dp = plane(batch=1, cores=(1.0, 2.0))
    out = run(dp, [0], slo_us=1_000_000, until=100_000)
    assert dp.events is not None
    assert dp.events[1] == ("dispatch@0/r1", 0, (0,))
    assert out[0] == (10_000, OK)  # l(1, 2 cores) = 10 ms


def test_in_place_resize_takes_effect_on_the_next_batch() -> None:
    dp = plane(batch=1)
    a = np.array([0, 1000], dtype=np.int64)
    dp.feed(a, a + 10_000_000, INF)
    dp.run_until(0)
    dp.resize_replica(0, 2.0)  # batch 0 keeps its 15 ms; batch 1 gets 10 ms
    dp.run_until(100_000)
    out = {r[0]: r[3] for r in dp.drain()}
    assert out == {0: 15_000, 1: 25_000}
