"""The event gateway: the node manager as the host, for clients with neither Redis nor the
embedded store (curl, a browser, any language with HTTP).

``POST /v1/operators/{name}/events`` takes a JSON array of events (or ``{"events": [...]}``)
and hands it to a `Tap`: an `OperatorClient` on the operator's queues owned by the node
manager. The tap's receiver appends every result to a bounded, numbered log (ids 1, 2, ...);
``GET .../results`` (Server-Sent Events) and ``.../ws`` (WebSocket) stream that log from any
id still retained, so a client that reconnects with ``Last-Event-ID`` (or ``?after=``) loses
nothing that is still in the log. A client slower than the log (`log_size` results) gets an
explicit ``gap`` message with the number of results it missed.

Backpressure: a push is refused with 429 (and ``Retry-After``) while more than
`max_pending` events wait for the operator (buffered in the tap or queued in the in queue),
so a fast client cannot fill the store's memory.

A tap attaches on the first push or subscription of an operator and from then on it is the
only consumer of that operator's out queue; do not mix a tap and another host on the same
operator.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tidal.cep.client import OperatorClient
from tidal.cep.codec import Batch, Codec
from tidal.cep.store import open_store
from tidal.core.errors import TidalError

Event = dict[str, Any]


class Backpressure(TidalError):
    """The operator's input is full (HTTP 429)."""


@dataclass
class _Waiter:
    loop: asyncio.AbstractEventLoop
    event: asyncio.Event = field(default_factory=asyncio.Event)


class Tap:
    """One operator's gateway: pushes events, keeps a numbered log of its results."""

    def __init__(self, addr: dict[str, Any], max_pending: int, log_size: int) -> None:
        self.codec = Codec(addr["codec"])
        self.in_key = str(addr["in"])
        self.frame_events = int(addr["batch"]) if addr["mode"] == "blob" else 1
        self.client = OperatorClient(
            open_store(str(addr["store"])),
            self.in_key,
            str(addr["out"]),
            self.codec,
            mode=addr["mode"],
            batch=int(addr["batch"]),
            flush_ms=float(addr["flush_ms"]),
            sink=self._on_results,
        )
        self.max_pending = max_pending
        self.log: deque[Event] = deque(maxlen=log_size)
        self.next_id = 1  # id of the next result
        self.accepted = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._waiters: list[_Waiter] = []

    # -- results (receiver thread) ------------------------------------------------------
    def _on_results(self, batch: Batch) -> None:
        evs = self.codec.to_dicts(batch)
        with self._lock:
            self.log.extend(evs)
            self.next_id += len(evs)
            waiters = list(self._waiters)
        for w in waiters:
            w.loop.call_soon_threadsafe(w.event.set)

    def since(self, after: int, limit: int) -> tuple[int, list[Event], int]:
        """(id of the first returned result, results with id > after, missed count)."""
        with self._lock:
            first_kept = self.next_id - len(self.log)
            start = max(after + 1, first_kept)
            missed = start - (after + 1)
            n = min(self.next_id - start, limit)
            if n <= 0:
                return start, [], missed
            i0 = start - first_kept
            return start, [self.log[i] for i in range(i0, i0 + n)], missed

    def subscribe(self) -> _Waiter:
        w = _Waiter(asyncio.get_running_loop())
        with self._lock:
            self._waiters.append(w)
        return w

    def unsubscribe(self, w: _Waiter) -> None:
        with self._lock:
            if w in self._waiters:
                self._waiters.remove(w)

    # -- events (request threads) -------------------------------------------------------
    def pending(self) -> int:
        """Events not yet taken by the operator: frames in the in queue (B events per
        frame in blob mode, an upper bound) plus the tap's unflushed buffer."""
        frames = int(self.client.store.execute([("llen", self.in_key)])[0])
        return frames * self.frame_events + self.client.buffered()

    def push(self, events: list[Any]) -> int:
        """Validate and buffer `events`; Backpressure when the input is full."""
        if self.pending() + len(events) > self.max_pending:
            self.refused += len(events)
            raise Backpressure(
                f"operator input is full (more than {self.max_pending} events pending); retry"
            )
        bad = [e for e in events if not isinstance(e, dict)]
        if bad:
            raise TidalError(f"every event must be a JSON object, got {bad[0]!r}")
        n = self.client.submit(events)
        self.accepted += n
        return n

    def stats(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "refused": self.refused,
            "rejected": len(self.client.rejected),
            "results": self.next_id - 1,
            "pending": self.pending(),
        }

    def close(self) -> None:
        self.client.close()


class Gateway:
    """All taps of one node manager (created on first use, closed with the manager)."""

    def __init__(self, request: Any, max_pending: int = 100_000, log_size: int = 100_000) -> None:
        if max_pending < 1 or log_size < 1:
            raise TidalError(
                f"max_pending and log_size must be >= 1, got {max_pending}, {log_size}"
            )
        self._request = request  # NodeManager.request: starts the operator, gives addresses
        self.max_pending = max_pending
        self.log_size = log_size
        self._taps: dict[str, Tap] = {}
        self._lock = threading.Lock()

    def tap(self, name: str) -> Tap:
        with self._lock:
            t = self._taps.get(name)
            if t is None:
                t = self._taps[name] = Tap(self._request(name), self.max_pending, self.log_size)
            return t

    def stats(self, name: str) -> dict[str, Any] | None:
        t = self._taps.get(name)
        return None if t is None else t.stats()

    def close(self) -> None:
        with self._lock:
            for t in self._taps.values():
                t.close()
            self._taps.clear()
