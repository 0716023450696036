"""Earliest-deadline-first queue of requests: a binary heap keyed by (deadline, id).

Pure data structure: no clock, no asyncio, no I/O. The live data plane and the discrete-event
simulator use the same class (inside `tidal.dataplane.scheduler.GroupScheduler`); time is
passed in (``expire(now)``).

Contracts:
- ``pop()`` always returns the request with the smallest (deadline, id); ties on the deadline
  are broken by the smaller request id (FIFO for equal deadlines when ids increase).
- ``pop_batch(n)`` returns at most ``n`` requests in EDF order (an empty list when empty).
- ``expire(now)`` removes and returns, in EDF order, every request whose deadline is ``<= now``
  (a request due exactly now cannot be served in time). It costs O(k log n) for k expired.
- Iteration yields the deadlines of the queued requests in EDF order without modifying the queue
  (O(n log n)); ``budgets(now)`` yields the remaining budgets ``deadline - now``.
- Each request id may be queued at most once (ValueError otherwise); ``remove(id)`` deletes a
  request lazily (O(1) now, its heap entry discarded when it reaches the head). Removal marks
  the *entry*, not the id: the same id pushed again after a removal is a new entry and is
  served normally, whatever the order of later pops and peeks.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Generic, TypeVar

from tidal.core.request import Request

R = TypeVar("R", bound=Request)

# A heap entry: [deadline, id, seq, request or None once removed]. `seq` keeps entries with
# the same (deadline, id) (a removed one and its re-push) comparable without touching the
# request objects.


class EDFQueue(Generic[R]):
    """A min-heap of requests ordered by (deadline, id)."""

    __slots__ = ("_heap", "_live", "_seq")

    def __init__(self) -> None:
        self._heap: list[list[object]] = []
        self._live: dict[int, list[object]] = {}  # id -> its current (not removed) entry
        self._seq = 0

    def __len__(self) -> int:
        return len(self._live)

    def __bool__(self) -> bool:
        return bool(self._live)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._live

    def push(self, request: R) -> None:
        """Queue `request`. ValueError if a request with the same id is already queued."""
        rid = request.id
        if rid in self._live:
            raise ValueError(f"request id {rid} is already queued")
        self._seq += 1
        entry: list[object] = [request.deadline, rid, self._seq, request]
        self._live[rid] = entry
        heapq.heappush(self._heap, entry)

    def _drop_removed_head(self) -> None:
        heap = self._heap
        while heap and heap[0][3] is None:
            heapq.heappop(heap)

    def peek(self) -> R | None:
        """The request with the earliest deadline, or None when empty (queue unchanged)."""
        heap = self._heap
        if heap and heap[0][3] is None:
            self._drop_removed_head()
        return heap[0][3] if heap else None  # type: ignore[return-value]

    def pop(self) -> R:
        """Remove and return the earliest-deadline request. IndexError when empty."""
        heap = self._heap
        if heap and heap[0][3] is None:
            self._drop_removed_head()
        if not heap:
            raise IndexError("pop from an empty EDFQueue")
        entry = heapq.heappop(heap)
        del self._live[entry[1]]  # type: ignore[arg-type]
        return entry[3]  # type: ignore[return-value]

    def pop_batch(self, n: int) -> list[R]:
        """Remove and return up to `n` requests in EDF order (n < 0 is a ValueError)."""
        if n < 0:
            raise ValueError(f"batch size must be >= 0, got {n}")
        out: list[R] = []
        while len(out) < n and self._live:
            out.append(self.pop())
        return out

    def expire(self, now: float) -> list[R]:
        """Remove and return (EDF order) every request whose deadline is <= `now`."""
        out: list[R] = []
        heap = self._heap
        while heap:
            head = heap[0]
            if head[3] is None:
                heapq.heappop(heap)
                continue
            if head[0] > now:  # type: ignore[operator]
                break
            out.append(self.pop())
        return out

    def remove(self, request_id: int) -> R | None:
        """Remove the request `request_id` if queued; returns it (None when absent).

        Truthy exactly when the request was queued (the old bool contract still holds)."""
        entry = self._live.pop(request_id, None)
        if entry is None:
            return None
        req = entry[3]
        entry[3] = None  # lazy: the heap drops the entry when it reaches the head
        return req  # type: ignore[return-value]

    def drain(self) -> list[R]:
        """Remove and return every queued request in EDF order."""
        return self.pop_batch(len(self))

    def _sorted_live(self) -> list[list[object]]:
        return sorted((e for e in self._heap if e[3] is not None), key=lambda e: (e[0], e[1]))

    def __iter__(self) -> Iterator[float]:
        """Deadlines of the queued requests, earliest first (queue unchanged)."""
        for e in self._sorted_live():
            yield e[0]  # type: ignore[misc]

    def requests(self) -> list[R]:
        """The queued requests in EDF order (a copy; the queue is unchanged)."""
        return [e[3] for e in self._sorted_live()]  # type: ignore[misc]

    def budgets(self, now: float) -> list[float]:
        """Remaining budgets (deadline - now, seconds) of the queued requests in EDF order."""
        return [d - now for d in self]

    def count_before(self, deadline: float) -> int:
        """How many queued requests have a deadline <= `deadline` (those served first)."""
        n = 0
        for e in self._heap:
            if e[3] is not None and e[0] <= deadline:  # type: ignore[operator]
                n += 1
        return n
