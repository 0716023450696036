"""The batch watchdog (tidal.dataplane.watchdog): overdue and stalled batches, a real probe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tidal.dataplane.watchdog import Watchdog, WatchdogConfig, overdue_at, proc_progress

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
