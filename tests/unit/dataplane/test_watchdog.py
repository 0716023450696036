"""The batch watchdog (tidal.dataplane.watchdog): overdue and stalled batches, a real probe."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tidal.dataplane.watchdog import (
    NodeCpu,
    Sick,
    Watchdog,
    WatchdogConfig,
    overdue_at,
    proc_progress,
)

CFG = WatchdogConfig(factor=3.0, grace_s=0.5, stall_s=0.75)


def test_overdue_is_the_later_of_3x_predicted_and_deadline_plus_grace() -> None:
    assert overdue_at(10.0, 10.1, 10.05, CFG) == pytest.approx(10.55)  # deadline + grace
    assert overdue_at(10.0, 11.0, 10.05, CFG) == pytest.approx(13.0)  # 3 x predicted


def test_overdue_batch_is_reported_once() -> None:
    w = Watchdog(CFG)
    w.watch(1, replica=7, pid=None, start=0.0, predicted_end=0.1, deadline=0.2)
    assert w.check(0.69) == []
    (s,) = w.check(0.71)
    assert (s.batch_id, s.replica) == (1, 7) and "past max(3 x predicted 0.100 s" in s.reason
    assert w.check(5.0) == [] and len(w) == 0


def test_stopped_worker_is_sick_after_predicted_plus_stall() -> None:
    w = Watchdog(CFG)
    w.watch(1, replica=1, pid=42, start=0.0, predicted_end=0.05, deadline=100.0)
    stopped = lambda pid: ("T", 500)  # noqa: E731
    t = 0.0
    while not (found := w.check(t, stopped)):
        t = round(t + 0.1, 3)
    assert t == pytest.approx(0.8)  # predicted 0.05 + stall 0.75, probed every 0.1 s
    assert "stopped (state T)" in found[0].reason


def test_a_worker_making_progress_is_left_alone() -> None:
    w = Watchdog(CFG)
    w.watch(1, replica=1, pid=42, start=0.0, predicted_end=0.05, deadline=100.0)
    ticks = iter(range(1000))
    running = lambda pid: ("R", next(ticks))  # noqa: E731
    assert all(w.check(i / 10, running) == [] for i in range(20))  # 2 s, deadline far
    assert len(w) == 1
    w.forget(1)
    assert len(w) == 0


def test_proc_progress_sees_sigstop() -> None:
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        st = proc_progress(p.pid)
        assert st is not None and st[0] == "R"
        os.kill(p.pid, signal.SIGSTOP)
        for _ in range(100):
            st = proc_progress(p.pid)
            if st is not None and st[0] == "T":
                break
            time.sleep(0.01)
        assert st is not None and st[0] == "T"
    finally:
        p.kill()
        p.wait()
    assert proc_progress(p.pid) is None


def _reading(state: str, ticks: int, waited_ns: int) -> Callable[[int], tuple[str, int, int]]:
    """A probe that reads (state, ticks, run-queue wait ns) for any pid."""
    return lambda pid: (state, ticks, waited_ns)


def test_a_starved_worker_is_spared_while_the_node_is_saturated() -> None:
    """Runnable but not given the CPU (its run-queue wait grows at wall rate) on a saturated
    node: past its overdue time it is spared, for up to starved_grace_s."""
    w = Watchdog(CFG)  # overdue at max(3 x 0.1, 0.2 + 0.5) = 0.7 s; grace 10 s
    w.watch(1, replica=3, pid=42, start=0.0, predicted_end=0.1, deadline=0.2)
    t = 0.0
    while t < 10.6:
        # no CPU tick moved, 100 ms of run-queue wait per 100 ms probe: starved, not asleep
        assert w.check(t, _reading("R", 7, int(t * 1e9)), True) == [], t
        t = round(t + 0.1, 3)
    (s,) = w.check(10.8, _reading("R", 7, int(10.8e9)), True)
    assert "spared while starved of CPU, now it received" in s.reason


def test_starved_spare_needs_a_saturated_node_and_a_waiting_worker() -> None:
    for node_starved, wait_rate in ((False, 1.0), (True, 0.0)):
        w = Watchdog(CFG)
        w.watch(1, replica=3, pid=42, start=0.0, predicted_end=0.1, deadline=0.2)
        ticks = iter(range(1000))
        found: list[object] = []
        t = 0.0
        while not found and t < 5:
            probe = _reading("R", next(ticks), int(t * wait_rate * 1e9))
            found = list(w.check(t, probe, node_starved))
            t = round(t + 0.1, 3)
        assert t == pytest.approx(0.8), (node_starved, wait_rate)  # overdue at 0.7, seen at 0.7


def test_waiting_to_run_counts_as_progress_for_the_stall_rule() -> None:
    """No CPU tick for 2 s, but waiting on the run queue: not asleep. Asleep (no wait): sick
    after predicted + stall."""
    awake, asleep = Watchdog(CFG), Watchdog(CFG)
    for w in (awake, asleep):
        w.watch(1, replica=1, pid=42, start=0.0, predicted_end=0.05, deadline=100.0)
    for i in range(20):
        t = i / 10
        assert awake.check(t, _reading("R", 5, int(t * 0.5e9))) == []
    t = 0.0
    while not (found := asleep.check(t, _reading("S", 5, 1000))):
        t = round(t + 0.1, 3)
    assert t == pytest.approx(0.8) and "asleep" in found[0].reason


def test_node_cpu_reads_the_idle_share(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    node = NodeCpu(window_s=0.5, path=str(stat))
    for i, (busy, idle) in enumerate(((0, 0), (100, 2), (200, 4))):
        stat.write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
        node.sample(i * 0.25)
    assert node.idle_share() == pytest.approx(4 / 204) and node.starved()
    stat.write_text("cpu  300 0 0 104 0 0 0 0 0 0\n")
    node.sample(0.75)  # the window now starts at 0.25: 200 busy, 102 idle
    assert node.idle_share() == pytest.approx(102 / 302) and not node.starved()


def test_proc_progress_reads_run_queue_wait_of_a_real_process() -> None:
    got = proc_progress(os.getpid())
    assert got is not None and len(got) == 3 and got[2] >= 0


@pytest.mark.parametrize(("ticks_per_probe", "spared"), [(1, True), (4, False)])
def test_a_worker_given_under_half_its_quota_is_starved(ticks_per_probe: int, spared: bool) -> None:
    """1/3 core and waiting to run (throttled or starved): 1 tick (10 ms) per 100 ms is 30% of
    its quota, starved, spared; 4 ticks per 100 ms is its whole quota (throttled only): the
    batch is genuinely slow and sick at its overdue time, on a node that is not saturated."""
    from tidal.dataplane.watchdog import TICKS_PER_S

    per_probe = int(ticks_per_probe * TICKS_PER_S / 100)  # ticks in 100 ms at 1 or 4 "10 ms"
    w = Watchdog(CFG)
    w.watch(1, replica=3, pid=42, start=0.0, predicted_end=0.1, deadline=0.2, cores=1 / 3)
    t, found = 0.0, list[Sick]()
    while not found and t < 3:
        found = w.check(t, _reading("R", int(t * 10) * per_probe, int(t * 0.7e9)), False)
        t = round(t + 0.1, 3)
    assert (found == []) is spared
    if not spared:
        assert t == pytest.approx(0.8) and "; it received 120% of its" in found[0].reason


def test_a_verdict_is_dropped_when_the_batch_ends_in_the_same_loop_turn() -> None:
    """The reply reached the gateway in the loop turn of the tick that found the batch
    overdue (a lagging gateway): the batch ends before the verdict is acted on, no kill. A
    batch still running two timer turns later is acted on."""
    from tidal.core.clock import SimClock
    from tidal.dataplane.timers import ManualTimers
    from tidal.dataplane.watchdog import LaneWatchdog

    clock = SimClock()
    timers = ManualTimers(clock)
    killed: list[int] = []
    lw = LaneWatchdog(CFG, clock, timers, lambda s: killed.append(s.batch_id))
    lw.on_dispatch(1, 0, object(), 0.0, 0.1, 0.2)  # overdue at 0.7 s
    lw.on_dispatch(2, 1, object(), 0.0, 0.1, 0.2)
    clock.advance(0.7)
    lw._due = 0.7  # this tick runs on time (no gateway lag)
    lw._tick()  # both overdue: verdicts deferred
    lw.on_end(1)  # batch 1's reply, processed right after the tick
    asyncio.run(timers.run_until(0.7))  # the deferred confirmations, same clock reading
    assert killed == [2]


def test_proc_wchan_names_where_a_sleeping_worker_waits() -> None:
    from tidal.dataplane.watchdog import proc_wchan

    p = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while (w := proc_wchan(p.pid)) in ("", "main: 0") and time.monotonic() < deadline:
            time.sleep(0.05)  # until it sleeps in its read
        assert w.startswith("main: ") and "pipe" in w, w
    finally:
        p.kill()
        p.wait()
        assert p.stdin is not None
        p.stdin.close()
    assert proc_wchan(p.pid) == ""  # gone


def test_the_gateways_own_lag_is_not_the_workers() -> None:
    """A check that runs 0.5 s late (the gateway's loop was not scheduled) gives every batch
    in flight 0.5 s more on both rules: overdue at 0.7 + 0.5 - slack, not 0.7."""
    from tidal.dataplane.watchdog import LAG_SLACK_S

    w = Watchdog(CFG)
    w.watch(1, replica=1, pid=None, start=0.0, predicted_end=0.1, deadline=0.2)
    assert w.check(0.1) == [] and w.check(0.65, lag_s=0.5 - LAG_SLACK_S) == []
    assert w.check(1.1) == []
    (s,) = w.check(1.2)
    assert "the gateway's own lag 0.480 s" in s.reason
