"""How long a request waits in its socket before the gateway reads it, estimated online
(issue 13: the time admission cannot see).

A request's deadline counts from its arrival. The server can only stamp the moment its event
loop reads the first byte (`tidal.dataplane.http_conn`); bytes that reached the socket while
the loop was busy (decoding other bodies, answering, refusing) waited before that, and that
wait is part of the client's latency but not of the server's. It cannot be read per request
(no receive timestamps on TCP sockets), but its distribution can: a timer due at time T runs
when the loop finishes what it is doing at T, exactly as a socket that became readable at T
is served then. So a probe re-armed every `period_s` records how late it ran, and
`estimate_s` is the `quantile` of the last `window` lateness samples (about one second). The
server subtracts it from the first-byte time to estimate the arrival (measured, resnet18
JSON at 2x on 2 shared cores: the first byte of the answers that ended late at the client
was read 10-20 ms after the client started sending, while a 900 KB body's own parse is
counted from the first byte).

Contract: `LoopWait(loop).start()` arms the probe; `estimate_s` is 0.0 until `min_samples`
samples exist, then the quantile, updated every `every` samples (the sort is amortized);
`stop()` cancels it. Cost: one timer callback per `period_s` (100/s by default), whether or
not requests arrive. The quantile, not the mean: the wait of the request being stamped is not
known, only its distribution; charging a high quantile keeps most of that tail inside the
budget, and the lane's late-share feedback (`tidal.dataplane.calibration`) corrects the rest.
"""

from __future__ import annotations

import asyncio
from collections import deque

PERIOD_S = 0.01
WINDOW = 100
QUANTILE = 0.9


class LoopWait:
    """The probe of the module docstring on `loop`."""

    __slots__ = ("_due", "_every", "_handle", "_n", "_q", "_samples", "estimate_s", "loop",
                 "min_samples", "period_s")  # fmt: skip

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        period_s: float = PERIOD_S,
        window: int = WINDOW,
        quantile: float = QUANTILE,
        every: int = 10,
        min_samples: int = 10,
    ) -> None:
        if period_s <= 0 or window < 1 or not 0.0 <= quantile <= 1.0 or every < 1:
            raise ValueError("period_s > 0, window >= 1, quantile in [0, 1], every >= 1")
        self.loop = loop
        self.period_s = period_s
        self._q = quantile
        self._every = every
        self.min_samples = min(min_samples, window)
        self._samples: deque[float] = deque(maxlen=window)
        self._n = 0
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self.estimate_s = 0.0

    def start(self) -> None:
        """Arm the probe (idempotent)."""
        if self._handle is None:
            self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def observe(self, late_s: float) -> None:
        """One lateness sample (seconds; negative ones count as 0)."""
        self._samples.append(max(0.0, late_s))
        self._n += 1
        if len(self._samples) >= self.min_samples and self._n % self._every == 0:
            srt = sorted(self._samples)
            self.estimate_s = srt[int(self._q * (len(srt) - 1))]

    def _arm(self) -> None:
        self._due = self.loop.time() + self.period_s
        self._handle = self.loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        self.observe(self.loop.time() - self._due)
        self._arm()


__all__ = ["LoopWait"]
