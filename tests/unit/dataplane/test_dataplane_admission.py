"""Admission control against hand-computed cases."""

from __future__ import annotations

import pytest

from tidal.core import Request
from tidal.dataplane.admission import admit


def lat(b: int, c: float) -> float:
    """20 ms/c per request + 2 ms."""
    return 0.020 * b / c + 0.002


def _req(deadline: float) -> Request:
    return Request(id=99, arrival=0.0, deadline=deadline)


def test_idle_replica_accepts() -> None:
    a = admit(_req(0.1), 0, 0, [0.0], 1.0, lat, 4, 0.0)
    assert a.accepted and a.predicted_finish == pytest.approx(0.022)


def test_queue_ahead_refuses_with_retry_after() -> None:
    # 8 ahead with batch 4 -> batch index 2 on one replica busy until 0.01:
    # starts at 0.01 + 2*0.082 = 0.174, finish 0.174 + l(1) (queued=8 -> size 1)
    a = admit(_req(0.15), 8, 8, [0.01], 1.0, lat, 4, 0.0)
    assert not a.accepted and a.cause == "late"
    assert a.predicted_finish == pytest.approx(0.174 + 0.022)
    assert a.retry_after_s == pytest.approx(0.174)
    assert "8 requests ahead" in a.reason


def test_more_replicas_or_cores_admit() -> None:
    assert admit(_req(0.15), 8, 8, [0.01, 0.0, 0.0], 1.0, lat, 4, 0.0).accepted
    assert admit(_req(0.15), 8, 8, [0.01], 2.0, lat, 4, 0.0).accepted


def test_requests_behind_do_not_count_but_fill_batch() -> None:
    # nothing ahead, 3 behind: batch of 4 -> l(4,1) = 82 ms
    a = admit(_req(0.1), 0, 3, [0.0], 1.0, lat, 4, 0.0)
    assert a.accepted and a.predicted_finish == pytest.approx(0.082)


def test_no_replica_and_budget() -> None:
    a = admit(_req(1.0), 0, 0, [], 1.0, lat, 4, 0.0, cold_start_s=2.5)
    assert (a.accepted, a.cause, a.retry_after_s) == (False, "no_replica", 2.5)
    a = admit(_req(0.01), 0, 0, [0.0], 1.0, lat, 4, 0.0)
    assert not a.accepted and a.cause == "budget"


def test_validation() -> None:
    with pytest.raises(ValueError):
        admit(_req(1.0), 2, 1, [0.0], 1.0, lat, 4, 0.0)
    with pytest.raises(ValueError):
        admit(_req(1.0), 0, 0, [0.0], [1.0, 2.0], lat, 4, 0.0)
