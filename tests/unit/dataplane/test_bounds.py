"""Queue caps and admission priced in rows (tidal.dataplane.bounds)."""

from __future__ import annotations

import heapq

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidal.dataplane.bounds import (
    EXACT_BATCHES,
    LaneCaps,
    batch_rows,
    drain_time,
    over_cap,
    predict_finish_rows,
)


def lat(b: int, c: float) -> float:
    return (0.001 + 0.0001 * b) / c  # 1 ms + 0.1 ms per row, per core


def test_caps_refuse_past_rows_or_bytes() -> None:
    caps = LaneCaps(rows=2048, bytes=1 << 20)
    assert over_cap(caps, 1024, 1000, 1024, 1000, 0.2) is None
    v = over_cap(caps, 1025, 1000, 1024, 1000, 0.2)
    assert v is not None and "cap of 2048 rows" in v.reason and v.retry_after_s == 0.2
    v = over_cap(caps, 0, (1 << 20) - 10, 1, 11, 0.0)
    assert v is not None and "bytes" in v.reason and v.retry_after_s == 0.05


def test_a_1024_row_request_is_priced_as_1024_rows() -> None:
    one, _ = predict_finish_rows(1, 0, [0.0], [1.0], lat, 1, 0.0)
    big, _ = predict_finish_rows(1024, 0, [0.0], [1.0], lat, 1024, 0.0)
    assert one == pytest.approx(lat(1, 1.0)) and big == pytest.approx(lat(1024, 1.0))
    # 4 x 1024 rows queued ahead, batches of 1024 rows: the new row waits for all of them,
    # and its own batch fills up with later arrivals.
    f, start = predict_finish_rows(1, 4096, [0.0], [1.0], lat, 1024, 0.0)
    assert start == pytest.approx(4 * lat(1024, 1.0))
    assert f == pytest.approx(start + lat(1024, 1.0))


def test_busy_and_idle_replicas() -> None:
    # Replica 0 busy for 50 ms, replica 1 idle: one batch ahead goes to replica 1, ours to 0.
    f, start = predict_finish_rows(8, 8, [0.05, 0.0], [1.0, 1.0], lat, 8, 0.0)
    assert start == pytest.approx(min(0.05, lat(8, 1.0)))


def test_batch_rows_in_force() -> None:
    assert batch_rows(1, 0, 1.0, 8) == 1  # nothing ahead: a batch of one request
    assert batch_rows(1, 100, 1.0, 8) == 8  # 8 one-row requests per batch
    assert batch_rows(1, 10_000, 1024.0, 8) == 8192  # 8 requests of 1024 rows
    assert batch_rows(1024, 0, 1.0, 8) == 1024  # never below the request itself


def _exact(rows: int, ahead: int, free: list[float], cores: list[float], b: int) -> float:
    k, rest = divmod(ahead, b)
    h = [(t, i) for i, t in enumerate(free)]
    heapq.heapify(h)
    for _ in range(k):
        t, i = heapq.heappop(h)
        heapq.heappush(h, (t + lat(b, cores[i]), i))
    t, i = h[0]
    return t + lat(max(rest + rows, b), cores[i])


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 1024),
    batches=st.integers(0, 400),
    n=st.integers(1, 4),
    b=st.sampled_from([1, 8, 64, 1024]),
    busy=st.lists(st.floats(0, 0.5), min_size=4, max_size=4),
)
def test_fluid_tail_is_within_one_batch_of_the_exact_greedy(
    rows: int, batches: int, n: int, b: int, busy: list[float]
) -> None:
    free, cores = busy[:n], [1.0] * n
    ahead = batches * b + b // 2
    got, _ = predict_finish_rows(rows, ahead, free, cores, lat, b, 0.0)
    want = _exact(rows, ahead, free, cores, b)
    if batches <= EXACT_BATCHES:
        assert got == pytest.approx(want)
    else:
        assert abs(got - want) <= lat(b, 1.0) + 1e-9


def test_drain_time() -> None:
    assert drain_time(0, [0.2], [1.0], lat, 8, 0.0) == pytest.approx(0.2)
    assert drain_time(16, [0.0], [1.0], lat, 8, 0.0) == pytest.approx(2 * lat(8, 1.0))
    assert drain_time(5, [], [], lat, 8, 0.0) == 1.0
