"""Property: on random small instances (profile, SLO, batch, admission, batcher hold window,
arrivals, and random control changes: replicas added, removed and resized, batch changed), the
fast kernel and the reference data plane give every request the same outcome at the same
microsecond."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidal.core.profile import LatencyFit, VariantProfile
from tidal.sim.config import sim_scheduler
from tidal.sim.fast import FastDataPlane
from tidal.sim.latency import VariantLatency, noise_table
from tidal.sim.reference import INF, ReferenceDataPlane
from tidal.workload import arrivals, to_us

CORES = st.sampled_from([0.5, 1.0, 2.0, 3.0, 4.0])
OPS = st.lists(
    st.tuples(
        st.integers(0, 12_000),  # ms
        st.sampled_from(["add", "remove", "resize", "batch"]),
        CORES,
        st.integers(0, 7),
    ),
    max_size=8,
)


def outcomes(dp: object) -> dict[int, tuple[int, int]]:
    rows = dp.drain()  # type: ignore[attr-defined]
    if isinstance(rows, list):
        return {r[0]: (r[3], r[4]) for r in rows}
    ids, _, _, end, cause, _, _ = rows
    return {int(i): (int(e), int(c)) for i, e, c in zip(ids, end, cause, strict=True)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    gamma=st.floats(1, 60),
    delta=st.floats(0, 5),
    epsilon=st.floats(0, 20),
    eta=st.floats(0.1, 5),
    p99=st.floats(1.0, 2.0),
    batch=st.integers(1, 8),
    n_rep=st.integers(0, 3),
    cores=CORES,
    slo_ms=st.floats(5, 1500),
    admission=st.booleans(),
    hold=st.sampled_from([0.0, 0.1, 0.5]),
    rates=st.lists(st.integers(0, 150), min_size=2, max_size=12),
    seed=st.integers(0, 1000),
    ops=OPS,
)
def test_fast_equals_reference_on_random_instances(
    gamma: float,
    delta: float,
    epsilon: float,
    eta: float,
    p99: float,
    batch: int,
    n_rep: int,
    cores: float,
    slo_ms: float,
    admission: bool,
    hold: float,
    rates: list[int],
    seed: int,
    ops: list[tuple[int, str, float, int]],
) -> None:
    fit = LatencyFit(gamma=gamma, delta=delta, epsilon=epsilon, eta=eta, p99_ratio=p99)
    lat = VariantLatency(VariantProfile(name="v", accuracy=0.5, fit=fit))
    eps = noise_table([lat.sigma], seed)
    sched = sim_scheduler(admission=admission, hold_fraction=hold)
    ref = ReferenceDataPlane([[(lat, 0.5)]], eps, scheduler=sched)
    fast = FastDataPlane(lat, 0.5, eps[0], sched)
    a = to_us(arrivals(np.asarray(rates, dtype=np.float64), seed))
    d = a + int(round(slo_ms * 1000))
    live: list[int] = []
    next_rid = 0
    for dp in (ref, fast):
        dp.feed(a, d, INF)
        dp.set_lane(0, 0, batch, 1.0)
    for _ in range(n_rep):
        for dp in (ref, fast):
            dp.add_replica(next_rid, 0, 0, cores)
        live.append(next_rid)
        next_rid += 1
    for dp in (ref, fast):
        dp.kick(0)
    for t_ms, op, c, k in sorted(ops):
        t = t_ms * 1000
        for dp in (ref, fast):
            dp.run_until(t)
        if op == "add" or (op != "batch" and not live):
            for dp in (ref, fast):
                dp.add_replica(next_rid, 0, 0, c)
            live.append(next_rid)
            next_rid += 1
        elif op == "remove":
            rid = live.pop(k % len(live))
            for dp in (ref, fast):
                dp.remove_replica(rid)
        elif op == "resize":
            rid = live[k % len(live)]
            for dp in (ref, fast):
                dp.resize_replica(rid, c)
        else:
            for dp in (ref, fast):
                dp.set_lane(0, 0, k + 1, 1.0)
        for dp in (ref, fast):
            dp.kick(t)
    end = (len(rates) + 30) * 1_000_000
    for dp in (ref, fast):
        dp.run_until(end)
        dp.finish()
    o_ref, o_fast = outcomes(ref), outcomes(fast)
    assert len(o_ref) == len(a)  # conservation: every request ends exactly once
    assert o_ref == o_fast
    assert ref.counters[0].arrivals == fast.counters[0].arrivals
    assert ref.counters[0].busy_core_us == fast.counters[0].busy_core_us
