"""The cluster placement book: cores per node, CPU sets without overlap (pure, no Ray)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidal.control.placement import NodeSpec, PlacementBook


def book(*nodes: tuple[str, int]) -> PlacementBook:
    b = PlacementBook()
    b.set_nodes({n: NodeSpec(float(c), tuple(range(c))) for n, c in nodes})
    return b


def test_whole_cores_never_share_a_cpu() -> None:
    b = book(("a", 2))
    g1, g2, g3 = (b.reserve(f"r{i}", "a", 1.0) for i in range(3))
    assert g1 is not None and g2 is not None
    assert set(g1.cpus).isdisjoint(g2.cpus)
    assert g3 is None  # the node is full: nothing booked
    assert b.used() == {"a": 2.0}


def test_fractional_replicas_share_within_one_core() -> None:
    b = book(("a", 2))
    gs = [b.reserve(f"r{i}", "a", 0.5) for i in range(4)]
    assert all(g is not None for g in gs)
    assert b.reserve("r5", "a", 0.5) is None


def test_fragmentation_widens_the_cpu_set() -> None:
    b = book(("a", 2))
    assert b.reserve("x", "a", 0.66) is not None
    assert b.reserve("y", "a", 0.66) is not None
    g = b.reserve("z", "a", 0.66)  # 0.34 free on each CPU: spread over both
    assert g is not None and len(g.cpus) == 2


def test_resize_keeps_cpus_and_refuses_overcommit() -> None:
    b = book(("a", 2))
    g = b.reserve("r", "a", 1.0)
    assert g is not None
    assert b.reserve("s", "a", 1.0) is not None
    assert b.resize("r", 2.0) is None  # would overcommit: the grant stays as it was
    kept = b.grant("r")
    assert kept is not None and kept.cores == 1.0
    small = b.resize("r", 0.5)
    assert small is not None and small.cpus == g.cpus


def test_node_loss_returns_its_replicas() -> None:
    b = book(("a", 2), ("b", 2))
    b.reserve("r1", "a", 1.0)
    b.reserve("r2", "b", 1.0)
    assert b.set_nodes({"b": NodeSpec(2.0, (0, 1))}) == ["r1"]
    assert b.grant("r1") is None and b.capacity().nodes == 1
    assert b.release("r1") is None  # idempotent


def test_bad_cores_named() -> None:
    with pytest.raises(ValueError, match="cores must be > 0"):
        book(("a", 2)).reserve("r", "a", 0.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0.25, 0.5, 0.75, 1.0, 1.5, 2.0]), min_size=1, max_size=12))
def test_no_cpu_ever_carries_more_than_one_core(sizes: list[float]) -> None:
    b = book(("a", 4))
    for i, c in enumerate(sizes):
        b.reserve(f"r{i}", "a", c)
    load: dict[int, float] = {}
    for g in b.grants():
        assert len(g.cpus) >= 1
        for cpu in g.cpus:
            load[cpu] = load.get(cpu, 0.0) + g.cores / len(g.cpus)
    assert all(v <= 1.0 + 1e-9 for v in load.values()), load
    assert sum(g.cores for g in b.grants()) <= 4.0 + 1e-9


def test_nodes_on_one_host_spread_over_its_cpus() -> None:
    """Three raylets on one 2-CPU kernel: their first replicas do not all pin CPU 0; the
    1.0-per-CPU limit stays per node (each node's cores are its own)."""
    b = PlacementBook()
    b.set_nodes({n: NodeSpec(2 / 3, (0, 1), host="boot-1") for n in "abc"})
    b.add_node("d", NodeSpec(2 / 3, (0, 1)))  # another kernel: its own CPU ids
    pins = [b.reserve(f"r{n}", n, 2 / 3) for n in "abc"]
    assert all(g is not None and len(g.cpus) == 1 for g in pins)
    assert {g.cpus[0] for g in pins if g is not None} == {0, 1}
    other = b.reserve("rd", "d", 2 / 3)
    assert other is not None and other.cpus == (0,)
    full = PlacementBook()
    full.set_nodes({n: NodeSpec(2.0, (0, 1), host="h") for n in "ab"})
    assert all(full.reserve(f"r{n}{i}", n, 1.0) is not None for n in "ab" for i in range(2))
