"""RayExecutor._reserve without Ray: a refusal by the placement authority on the node where
Ray already placed the replica's hold is the book lagging Ray (a grow booked before its
hold, a release after its holds went) and is asked again until `grow_timeout_s` + 2 s has
passed; only then the start fails, naming the node and the cores."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tidal.control import ray_substrate
from tidal.control.ray_substrate import RayExecutor
from tidal.core.clock import SimClock
from tidal.core.errors import TidalError


class _Remote:
    def __init__(self, fn: Any) -> None:
        self.remote = fn


class FakeAuthority:
    """Refuses the first `refusals` reservations, then grants; the clock advances 0.5 s per
    call (the time the book takes to catch up)."""

    def __init__(self, clock: SimClock, refusals: int) -> None:
        self.calls = 0
        self.clock = clock
        self.refusals = refusals
        self.reserve = _Remote(self._reserve)
        self.used = _Remote(lambda: {"n1": 0.667})

    def _reserve(self, *args: Any) -> Any:
        self.calls += 1
        self.clock.advance(0.5)
        return None if self.calls <= self.refusals else ("grant", args[1])


class FakeFactory:
    def __init__(self, auth: FakeAuthority, clock: SimClock) -> None:
        self.authority = auth
        self.clock = clock
        self._closing = threading.Event()

    def node_cores(self, node: str) -> float:
        return 0.667


class FakeRay:
    @staticmethod
    def get(x: Any, timeout: float | None = None) -> Any:
        return x


def _executor(refusals: int, monkeypatch: pytest.MonkeyPatch) -> tuple[RayExecutor, Any]:
    monkeypatch.setattr(ray_substrate, "_ray", lambda: FakeRay)
    clock = SimClock()
    auth = FakeAuthority(clock, refusals)
    ex = RayExecutor.__new__(RayExecutor)
    ex.factory = FakeFactory(auth, clock)  # type: ignore[assignment]
    ex.replica_id = "r-1"
    ex.grow_timeout_s = 5.0
    return ex, auth


def test_a_lagging_book_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    ex, auth = _executor(3, monkeypatch)
    assert ex._reserve("n1", 0.333, [0], "boot") == ("grant", "n1")
    assert auth.calls == 4


def test_a_book_that_stays_full_fails_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    ex, auth = _executor(10**6, monkeypatch)
    with pytest.raises(TidalError, match="no CPUs for 0.333 cores on node n1"):
        ex._reserve("n1", 0.333, [0], "boot")
    assert auth.calls == 14  # until 7 s (grow timeout + 2 s) passed, at 0.5 s per call
