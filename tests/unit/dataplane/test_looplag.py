"""tidal.dataplane.looplag: the socket-wait estimate (a quantile of the event loop's recent
lateness) and its use: the HTTP app counts a request's deadline from its first byte less
that estimate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from tidal.core.clock import MonotonicClock
from tidal.dataplane.http import _first_byte
from tidal.dataplane.looplag import LoopWait


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def test_quantile_of_the_window_after_min_samples(loop: asyncio.AbstractEventLoop) -> None:
    w = LoopWait(loop, window=20, quantile=0.9, every=1, min_samples=5)
    for _ in range(4):
        w.observe(0.010)
    assert w.estimate_s == 0.0  # too few samples yet
    w.observe(0.010)
    assert w.estimate_s == pytest.approx(0.010)
    for x in range(20):  # the window keeps the last 20: 0, 1, ..., 19 ms
        w.observe(x * 1e-3)
    assert w.estimate_s == pytest.approx(0.017)  # int(0.9 * 19) = 17th of the sorted
    w.observe(-1.0)  # a timer that fired early counts as no wait
    assert min(w._samples) == 0.0


def test_a_busy_loop_raises_the_estimate_an_idle_one_keeps_it_small() -> None:
    async def main() -> tuple[float, float]:
        w = LoopWait(asyncio.get_running_loop(), period_s=0.002, window=20, every=1,
                     min_samples=5)  # fmt: skip
        w.start()
        w.start()  # idempotent
        await asyncio.sleep(0.1)
        idle = w.estimate_s
        for _ in range(20):  # the loop blocked 15 ms at a time, as a long parse does
            time.sleep(0.015)
            await asyncio.sleep(0)
        busy = w.estimate_s
        w.stop()
        w.stop()
        return idle, busy

    idle, busy = asyncio.run(main())
    assert idle < 0.010
    assert busy >= 0.010


def test_bad_arguments_are_refused(loop: asyncio.AbstractEventLoop) -> None:
    with pytest.raises(ValueError):
        LoopWait(loop, period_s=0.0)


def test_the_deadline_counts_from_the_first_byte_less_the_wait() -> None:
    gw = SimpleNamespace(clock=MonotonicClock())
    st = {"tidal.t_first_byte": 10.0, "tidal.socket_wait_s": 0.004}
    assert _first_byte({"state": st}, gw) == pytest.approx(9.996)  # type: ignore[arg-type]
    assert _first_byte({"state": {"tidal.t_first_byte": 10.0}}, gw) == 10.0  # type: ignore[arg-type]
    other = SimpleNamespace(clock=object())  # not the server's clock: the gateway's now
    assert _first_byte({"state": st}, other) is None  # type: ignore[arg-type]
