"""EDF queue: order, ties, batches, expiry, lazy removal."""

from __future__ import annotations

import random

import pytest

from tidal.core import Request
from tidal.dataplane.edf import EDFQueue


def _r(i: int, deadline: float, arrival: float = 0.0) -> Request:
    return Request(id=i, arrival=arrival, deadline=deadline)


def test_pop_in_deadline_order_ties_by_id() -> None:
    q: EDFQueue[Request] = EDFQueue()
    for i, d in [(3, 2.0), (1, 5.0), (2, 2.0), (4, 1.0)]:
        q.push(_r(i, d))
    assert list(q) == [1.0, 2.0, 2.0, 5.0]
    assert [q.pop().id for _ in range(4)] == [4, 2, 3, 1]
    assert len(q) == 0 and q.peek() is None
    with pytest.raises(IndexError):
        q.pop()


def test_later_request_with_tighter_budget_goes_first() -> None:
    q: EDFQueue[Request] = EDFQueue()
    q.push(Request(id=1, arrival=0.0, deadline=0.0 + 1.0))  # 1 s budget
    q.push(Request(id=2, arrival=0.1, deadline=0.1 + 0.2))  # later, 200 ms budget
    assert q.pop().id == 2


def test_pop_batch_expire_budgets() -> None:
    q: EDFQueue[Request] = EDFQueue()
    for i in range(10):
        q.push(_r(i, float(i)))
    assert q.budgets(0.5)[:3] == [-0.5, 0.5, 1.5]
    assert [r.id for r in q.expire(2.0)] == [0, 1, 2]  # deadline <= now expires
    assert [r.id for r in q.pop_batch(3)] == [3, 4, 5]
    assert q.count_before(7.0) == 2
    assert [r.id for r in q.pop_batch(100)] == [6, 7, 8, 9]
    assert q.pop_batch(4) == []
    with pytest.raises(ValueError):
        q.pop_batch(-1)


def test_duplicate_and_remove() -> None:
    q: EDFQueue[Request] = EDFQueue()
    q.push(_r(1, 1.0))
    with pytest.raises(ValueError):
        q.push(_r(1, 2.0))
    q.push(_r(2, 2.0))
    assert q.remove(1) and not q.remove(1)
    assert 1 not in q and len(q) == 1
    assert list(q) == [2.0]
    assert q.peek() is not None and q.peek().id == 2  # type: ignore[union-attr]
    q.push(_r(1, 0.5))  # the id may come back after removal
    assert [r.id for r in q.drain()] == [1, 2]


def test_random_against_sorted() -> None:
    rng = random.Random(7)
    q: EDFQueue[Request] = EDFQueue()
    ref: list[tuple[float, int]] = []
    for i in range(500):
        d = rng.choice([rng.random(), 0.5])
        q.push(_r(i, d))
        ref.append((d, i))
        if rng.random() < 0.3:
            ref.sort()
            assert q.pop().id == ref.pop(0)[1]
    ref.sort()
    assert [r.id for r in q.drain()] == [i for _, i in ref]


def test_remove_then_repush_same_id_without_peek() -> None:
    # Lazy removal is keyed by the heap entry: the removed entry stays in the heap until it
    # reaches the head, and must not hide (or be returned instead of) the new one.
    q: EDFQueue[Request] = EDFQueue()
    q.push(_r(1, 1.0))
    q.push(_r(2, 2.0))
    assert q.remove(1)
    q.push(_r(1, 3.0))  # same id, later deadline; no peek in between
    assert len(q) == 2 and q.count_before(1.5) == 0 and list(q) == [2.0, 3.0]
    assert [(r.id, r.deadline) for r in (q.pop(), q.pop())] == [(2, 2.0), (1, 3.0)]
    assert not q
    q.push(_r(5, 1.0))
    q.remove(5)
    q.push(_r(5, 1.0))  # same id and deadline as the removed entry
    assert q.pop().id == 5 and len(q) == 0 and q.peek() is None
