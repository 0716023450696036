"""The flow table (hash ways, collisions, timeout), side features and the decision after k."""

from __future__ import annotations

import numpy as np

from tidal.innet.extract import STREAM_FLOW, Decider
from tidal.innet.flowstate import (
    NO_SLOT,
    FlowTable,
    flow_decisions,
    instance_rank,
    side_features,
)
from tidal.innet.header import Frame, decode, encode
from tidal.innet.program import STREAM_VERDICT


def _key(i: int) -> tuple[int, bytes, bytes, int, int]:
    return 6, bytes([10, 0, 0, i % 250]), b"\x0a\x00\x00\x01", 1000 + i, 80


def test_table_features_equal_the_vectorized_ones_and_timeout_starts_an_instance() -> None:
    rng = np.random.default_rng(3)
    t = FlowTable(slots=64, timeout_us=1_000_000)
    keys = [_key(i) for i in range(8)]
    ts, lens, side, inst = 0, [], [], []
    inst_of: dict[tuple[int, int], int] = {}
    stamps = []
    for _ in range(400):
        j = int(rng.integers(0, 8))
        ts += int(rng.choice([1_000, 40_000, 2_000_000]))  # some gaps exceed the timeout
        n = int(rng.integers(0, 1400))
        st = t.update(keys[j], ts, n)
        assert st.slot != NO_SLOT
        if st.n == 1:
            inst_of[(st.slot, st.gen)] = len(inst_of)
        inst.append(inst_of[(st.slot, st.gen)])
        side.append(st.side)
        stamps.append(ts)
        lens.append(n)
    got = side_features(np.array(inst), np.array(stamps), np.array(lens))
    assert np.array_equal(got, np.array(side, dtype=np.uint8))
    assert len(inst_of) > 8  # gaps over the timeout started new instances
    assert t.collisions == 0


def test_both_ways_taken_means_untracked_and_counted() -> None:
    t = FlowTable(slots=1, timeout_us=10**9)  # two entries in all
    a, b, c = t.update(_key(1), 10, 5), t.update(_key(2), 20, 5), t.update(_key(3), 30, 5)
    assert a.slot != b.slot and c.slot == NO_SLOT and t.collisions == 1
    assert t.update(_key(1), 40, 5).n == 2  # the tracked flows keep their state


def test_decision_after_k_with_early_exit_equals_the_exit_switch() -> None:
    rng = np.random.default_rng(5)
    n = 600
    inst = rng.integers(0, 30, n)
    flow = inst // 2  # two instances per flow
    pred = (rng.random(n) < np.where(inst % 3 == 0, 0.9, 0.2)).astype(np.int64)
    k, need = 8, 6
    verdict, taken = flow_decisions(pred, inst, flow, 15, k, need)
    dec = Decider(k=k, slots=64, flow_slots=64, need=need)
    rank = instance_rank(inst)
    sw = np.zeros(15, dtype=np.int64)
    for i in range(n):
        v = encode(Frame(STREAM_VERDICT, i, 0, 0, 1, 4, 0, np.array([pred[i], 0, 0])))
        f = encode(
            Frame(STREAM_FLOW, i, 0, 0, 1, 2, 0, np.array([inst[i] + 1, 1, min(255, rank[i])]))
        )
        assert dec.receive(v) == []
        (out,) = dec.receive(f)
        if decode(out[1]).vector[3] == 1:
            sw[flow[i]] = 1
    assert np.array_equal(sw, verdict)
    assert verdict.any() and not verdict.all()
    assert ((taken >= 1) & (taken <= k)).all()
