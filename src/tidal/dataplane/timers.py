"""Timers on the injected clock, for the live drivers of `GroupScheduler`.

The scheduler says *when* to look again (`WakeAt(t)`, clock seconds); a driver needs a timer
that fires then. `LoopTimers` is the live one: asyncio's `call_later` for `t - clock.now()`
(with `MonotonicClock` the loop's time and the clock agree). `ManualTimers` runs on a
`SimClock`: nothing fires until a test (or a scripted run) calls `run_until(t)`, which lets
the event loop settle, then fires the earliest timer after advancing the clock to its time,
and so on. Fake executors sleep on it (`sleep(dt)`), so a gateway test orders events by the
scripted clock and never by the machine's speed.

`inline` replaces `asyncio.to_thread` for the blocking calls a driver offloads (starting a
worker, resizing it) when the executors are in-process fakes: with threads the order of
events would depend on the OS scheduler.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from tidal.core.clock import Clock, SimClock

T = TypeVar("T")


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    def call_at(self, t: float, cb: Callable[[], None]) -> TimerHandle:
        """Call `cb()` once the clock reads `t` (soon, if `t` is past)."""
        ...


Offload = Callable[..., Awaitable[Any]]
"""`await offload(fn, *args)` runs a blocking call off the event loop (asyncio.to_thread)."""


class LoopTimers:
    """asyncio timers; the delay is measured on the injected clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def call_at(self, t: float, cb: Callable[[], None]) -> TimerHandle:
        loop = asyncio.get_running_loop()
        return loop.call_later(max(0.0, t - self.clock.now()), cb)


class _Entry:
    __slots__ = ("t", "last", "seq", "cb", "cancelled")

    def __init__(self, t: float, last: bool, seq: int, cb: Callable[[], None]) -> None:
        self.t, self.last, self.seq, self.cb, self.cancelled = t, last, seq, cb, False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: _Entry) -> bool:
        return (self.t, self.last, self.seq) < (other.t, other.last, other.seq)


class ManualTimers:
    """Timers on a SimClock, fired by `run_until` in (time, creation) order; `call_at(...,
    last=True)` fires after the others due at the same time (the simulator's order: batch
    completions and timers before arrivals)."""

    def __init__(self, clock: SimClock, settle_rounds: int = 50) -> None:
        self.clock = clock
        self.settle_rounds = settle_rounds
        self._heap: list[_Entry] = []
        self._seq = itertools.count()

    def call_at(self, t: float, cb: Callable[[], None], last: bool = False) -> TimerHandle:
        e = _Entry(max(t, self.clock.now()), last, next(self._seq), cb)
        heapq.heappush(self._heap, e)
        return e

    def sleep(self, dt: float) -> asyncio.Future[None]:
        """A future resolved once the clock has advanced by `dt` (for fake executors)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done() -> None:
            if not fut.done():
                fut.set_result(None)

        self.call_at(self.clock.now() + dt, done)
        return fut

    async def settle(self) -> None:
        """Let every ready task of the event loop run (no timer fires, the clock stands)."""
        for _ in range(self.settle_rounds):
            await asyncio.sleep(0)

    def next_time(self) -> float | None:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0].t if self._heap else None

    async def run_until(self, t: float) -> None:
        """Fire, in order, every timer due by `t`, settling the loop before and after each;
        the clock ends at `t`."""
        while True:
            await self.settle()
            nt = self.next_time()
            if nt is None or nt > t:
                break
            e = heapq.heappop(self._heap)
            self.clock.advance_to(max(self.clock.now(), e.t))
            e.cb()
        if t > self.clock.now():
            self.clock.advance_to(t)
        await self.settle()


async def inline(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args)` on the loop (an `Offload` for in-process fakes)."""
    return fn(*args)
