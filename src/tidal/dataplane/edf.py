"""Earliest-deadline-first queue of requests: a binary heap keyed by (deadline, id).

Pure data structure: no clock, no asyncio, no I/O. The live data plane and the discrete-event
simulator use the same class; time is passed in (``expire(now)``).

Contracts:
- ``pop()`` always returns the request with the smallest (deadline, id); ties on the deadline
  are broken by the smaller request id (FIFO for equal deadlines when ids increase).
- ``pop_batch(n)`` returns at most ``n`` requests in EDF order (an empty list when empty).
- ``expire(now)`` removes and returns, in EDF order, every request whose deadline is ``<= now``
  (a request due exactly now cannot be served in time). It costs O(k log n) for k expired.
- Iteration yields the deadlines of the queued requests in EDF order without modifying the queue
  (O(n log n)); ``budgets(now)`` yields the remaining budgets ``deadline - now``.
- Each request id may be queued at most once (ValueError otherwise); ``remove(id)`` deletes a
  request lazily (O(1) now, discarded when it reaches the head).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from tidal.core.request import Request


class EDFQueue:
    """A min-heap of requests ordered by (deadline, id)."""

    __slots__ = ("_heap", "_ids", "_removed")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Request]] = []
        self._ids: set[int] = set()
        self._removed: set[int] = set()

    def __len__(self) -> int:
        return len(self._ids)

    def __bool__(self) -> bool:
        return bool(self._ids)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._ids

    def push(self, request: Request) -> None:
        """Queue `request`. ValueError if a request with the same id is already queued."""
        if request.id in self._ids:
            raise ValueError(f"request id {request.id} is already queued")
        self._ids.add(request.id)
        heapq.heappush(self._heap, (request.deadline, request.id, request))

    def _drop_removed_head(self) -> None:
        heap = self._heap
        while heap and heap[0][1] in self._removed:
            self._removed.discard(heapq.heappop(heap)[1])

    def peek(self) -> Request | None:
        """The request with the earliest deadline, or None when empty (queue unchanged)."""
        if self._removed:
            self._drop_removed_head()
        return self._heap[0][2] if self._heap else None

    def pop(self) -> Request:
        """Remove and return the earliest-deadline request. IndexError when empty."""
        if self._removed:
            self._drop_removed_head()
        if not self._heap:
            raise IndexError("pop from an empty EDFQueue")
        _, rid, req = heapq.heappop(self._heap)
        self._ids.discard(rid)
        return req

    def pop_batch(self, n: int) -> list[Request]:
        """Remove and return up to `n` requests in EDF order (n < 0 is a ValueError)."""
        if n < 0:
            raise ValueError(f"batch size must be >= 0, got {n}")
        out: list[Request] = []
        while len(out) < n and self._ids:
            out.append(self.pop())
        return out

    def expire(self, now: float) -> list[Request]:
        """Remove and return (EDF order) every request whose deadline is <= `now`."""
        out: list[Request] = []
        while True:
            head = self.peek()
            if head is None or head.deadline > now:
                return out
            out.append(self.pop())

    def remove(self, request_id: int) -> bool:
        """Remove the request `request_id` if queued; True when it was there."""
        if request_id not in self._ids:
            return False
        self._ids.discard(request_id)
        self._removed.add(request_id)
        return True

    def drain(self) -> list[Request]:
        """Remove and return every queued request in EDF order."""
        return self.pop_batch(len(self))

    def __iter__(self) -> Iterator[float]:
        """Deadlines of the queued requests, earliest first (queue unchanged)."""
        for deadline, rid, _ in sorted(self._heap, key=lambda e: (e[0], e[1])):
            if rid not in self._removed:
                yield deadline

    def requests(self) -> list[Request]:
        """The queued requests in EDF order (a copy; the queue is unchanged)."""
        return [
            r
            for d, rid, r in sorted(self._heap, key=lambda e: (e[0], e[1]))
            if rid not in self._removed
        ]

    def budgets(self, now: float) -> list[float]:
        """Remaining budgets (deadline - now, seconds) of the queued requests in EDF order."""
        return [d - now for d in self]

    def count_before(self, deadline: float) -> int:
        """How many queued requests have a deadline <= `deadline` (those served first)."""
        return sum(1 for d, rid, _ in self._heap if d <= deadline and rid not in self._removed)
