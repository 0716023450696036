"""RayFactoryBase's warm standby actors without Ray: a standby taken by a start is not
replaced while any start from this gateway is in flight, nor within `standby_quiet_s` of
the last one (the replacement's process runs under no quota and took CPU from the replicas
starting at theirs); a start waiting for room (`idle`) does not hold replacements back."""

from __future__ import annotations

from typing import Any

import pytest

from tidal.control import ray_factory
from tidal.control.ray_factory import RayFactoryBase
from tidal.core.clock import SimClock


class FakeActorClass:
    def __init__(self) -> None:
        self.created: list[str] = []

    def options(self, scheduling_strategy: Any = None) -> FakeActorClass:
        self._node = str(scheduling_strategy)
        return self

    def remote(self) -> str:
        name = f"actor-{len(self.created)}@{self._node}"
        self.created.append(name)
        return name


def _factory(monkeypatch: pytest.MonkeyPatch) -> tuple[RayFactoryBase, FakeActorClass, SimClock]:
    cls = FakeActorClass()
    monkeypatch.setattr(ray_factory, "_actor_class", lambda: cls)
    monkeypatch.setattr(ray_factory, "_node_affinity", lambda node: node)
    clock = SimClock()
    fac = RayFactoryBase(None, clock=clock)
    clock.advance(10.0)
    return fac, cls, clock


def test_a_taken_standby_is_replaced_only_after_the_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fac, cls, clock = _factory(monkeypatch)
    fac._spare("n1")
    assert cls.created == ["actor-0@n1"]
    with fac.starting():
        assert fac.take_standby("n1") == "actor-0@n1"
        fac._spare("n1")  # a nodes() call mid-start (claim, node_cores)
        with fac.starting():  # a second start overlapping the first
            pass
        clock.advance(5.0)
        fac._spare("n1")
        assert cls.created == ["actor-0@n1"]  # still starting: no replacement
    clock.advance(fac.standby_quiet_s - 0.5)
    fac._spare("n1")
    assert cls.created == ["actor-0@n1"]  # within the quiet time after the last start
    clock.advance(1.0)
    fac._spare("n1")
    assert cls.created == ["actor-0@n1", "actor-1@n1"]
    fac._spare("n1")  # one standby per node
    assert len(cls.created) == 2


def test_a_start_waiting_for_room_does_not_hold_replacements(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fac, cls, clock = _factory(monkeypatch)
    with fac.starting(), fac.idle():
        clock.advance(fac.standby_quiet_s + 1.0)
        fac._spare("n2")
        assert cls.created == ["actor-0@n2"]
    assert fac._starts == 0


def test_without_a_standby_a_start_makes_its_own_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    fac, cls, _ = _factory(monkeypatch)
    with fac.starting():
        assert fac.take_standby("n3") == "actor-0@n3"
    assert fac._standby == {}


def test_a_start_prefers_a_node_with_room_and_an_unclaimed_standby(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bench's surge: n1 full, n2 1/3 free with a standby, n3 empty with a standby. Two
    starts of 1/3 core go to n3 then n2 (each takes a warm actor), not both to n3 (the second
    would pay a fresh Ray worker process); with no standby left, the most free cores win."""
    fac, _, _ = _factory(monkeypatch)
    third = 1 / 3
    monkeypatch.setattr(fac, "nodes", lambda: {"n1": 2 * third, "n2": 2 * third, "n3": 2 * third})
    monkeypatch.setattr(fac, "used", lambda: {"n1": 2 * third, "n2": third})
    fac._spare("n2")
    fac._spare("n3")
    assert fac.claim(third) == "n3"  # both warm: the most free cores
    assert fac.claim(third) == "n2"  # n3's standby is claimed; n2's is not
    assert fac.claim(third) == "n3"  # no unclaimed standby with room: the most free (n3 1/3)
    assert fac.claim(third) is None  # nothing left
    fac.unclaim("n2", third)
    assert fac.claim(2 * third) is None  # n2 has 1/3 free
