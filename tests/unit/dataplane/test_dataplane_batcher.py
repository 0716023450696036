"""Batcher decision rules (pure, simulated time)."""

from __future__ import annotations

import pytest

from tidal.core import Request
from tidal.dataplane.batcher import decide, decide_n
from tidal.dataplane.edf import EDFQueue


def lat(b: int) -> float:
    """10 ms + 5 ms per request."""
    return 0.010 + 0.005 * b


def _q(deadlines: list[float]) -> EDFQueue:
    q: EDFQueue[Request] = EDFQueue()
    for i, d in enumerate(deadlines):
        q.push(Request(id=i, arrival=0.0, deadline=d))
    return q


def test_empty_queue_is_none() -> None:
    assert decide(EDFQueue(), 0.0, 8, lat, 100.0) is None


def test_full_batch_now() -> None:
    d = decide(_q([1.0] * 9), 0.0, 8, lat, 1000.0)
    assert d is not None and (d.dispatch_at, d.size, d.reason) == (0.0, 8, "full")


def test_single_request_without_estimate_goes_at_once() -> None:
    d = decide(_q([1.0]), 0.0, 8, lat, 0.0)
    assert d is not None and d.is_now(0.0) and d.size == 1 and d.reason == "alone"


def test_keeps_up_goes_at_once() -> None:
    # one request, l(1)=15 ms -> 66 req/s capacity at batch 1 > 50 req/s offered
    d = decide(_q([1.0]), 0.0, 8, lat, 50.0)
    assert d is not None and d.reason == "keeps_up" and d.is_now(0.0)


def test_waits_for_company_but_not_past_slack() -> None:
    # 2 queued, 1000 req/s: fill in 6 ms; deadline far -> wait until filled
    d = decide(_q([1.0, 1.0]), 0.0, 8, lat, 1000.0)
    assert d is not None and d.reason == "wait"
    assert d.dispatch_at == pytest.approx(0.006)
    # deadline close: t_latest = 0.06 - l(8)=0.05 -> 0.01; fill would take 0.04 s at 150/s
    d = decide(_q([0.06, 1.0]), 0.0, 8, lat, 150.0)
    assert d is not None and d.reason == "wait" and d.dispatch_at == pytest.approx(0.01)
    # at t_latest: go now
    d = decide(_q([0.06, 1.0]), 0.01, 8, lat, 150.0)
    assert d is not None and d.reason == "slack" and d.is_now(0.01) and d.size == 2


def test_no_company_expected_before_slack() -> None:
    # t_latest - now = 5 ms, 150 req/s -> 0.75 expected arrivals
    d = decide(_q([0.055, 0.1]), 0.0, 8, lat, 150.0)
    assert d is not None and d.reason == "no_company" and d.is_now(0.0)


def test_never_past_slack_property() -> None:
    for n in range(1, 8):
        for rate in (0.0, 10.0, 100.0, 1e4):
            for d0 in (0.01, 0.05, 0.2, 2.0):
                dec = decide_n(n, d0, 0.0, 8, lat, rate)
                assert dec is not None and dec.dispatch_at >= 0.0
                assert dec.dispatch_at <= max(0.0, d0 - lat(8)) + 1e-12
                assert 1 <= dec.size <= 8


def test_bad_max_batch() -> None:
    with pytest.raises(ValueError):
        decide_n(1, 1.0, 0.0, 0, lat)


def test_hold_window_collects_a_burst_then_goes() -> None:
    q: EDFQueue[Request] = EDFQueue()
    q.push(Request(id=0, arrival=1.000, deadline=10.0))
    d = decide(q, 1.000, 8, lat, 5.0, hold_s=0.004)
    assert d is not None and d.reason == "hold" and d.dispatch_at == pytest.approx(1.004)
    d = decide(q, 1.004, 8, lat, 5.0, hold_s=0.004)
    assert d is not None and d.reason == "held" and d.is_now(1.004)
    # never past the slack: t_latest = 1.05 - l(8) = 1.0
    q2: EDFQueue[Request] = EDFQueue()
    q2.push(Request(id=1, arrival=0.999, deadline=1.05))
    d = decide(q2, 0.999, 8, lat, 5.0, hold_s=0.004)
    assert d is not None and d.dispatch_at == pytest.approx(1.0)
    # no estimate: still at once
    d = decide(q, 1.0, 8, lat, 0.0, hold_s=0.004)
    assert d is not None and d.reason == "alone"
