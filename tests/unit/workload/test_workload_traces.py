"""Workload loaders: the papers' Twitter windows, synthetic shapes, arrivals, dynamic SLOs."""

from __future__ import annotations

import numpy as np
import pytest

from tidal.core.errors import TidalError
from tidal.workload import (
    arrival_chunks,
    arrivals,
    dynamic_slos,
    load_trace,
    synthetic_rates,
    to_us,
)
from tidal.workload import twitter as tw


@pytest.mark.shared
@pytest.mark.parametrize(
    ("name", "seconds", "damping"),
    [
        ("bursty", 1200, 8),
        ("steady-low", 1200, 8),
        ("steady-high", 1200, 8),
        ("fluctuating", 1200, 8),
        ("infadapter", 1260, 1),
        ("sponge", 1200, 1),
        ("100-160", 60, 1),
    ],
)
def test_named_windows_have_the_papers_lengths_and_damping(
    name: str, seconds: int, damping: int
) -> None:
    rates = load_trace(f"twitter:{name}")
    assert len(rates) == seconds
    full = tw.full_trace()
    seg = tw.window(name).segments[0]
    assert np.array_equal(rates[: seg[1] - seg[0]], full[seg[0] : seg[1]] // damping)


@pytest.mark.shared
def test_full_trace_matches_provenance_and_window_definitions() -> None:
    full = tw.full_trace()
    assert len(full) == 1_899_061 and full.max() == 388
    assert tw.window("infadapter").segments == ((15 * 86400 + 82 * 60, 15 * 86400 + 103 * 60),)
    steady_high = load_trace("twitter:steady-high")
    assert np.array_equal(steady_high[:600], steady_high[600:])  # the window twice in a row


@pytest.mark.shared
def test_damping_override_and_compression_keep_every_request() -> None:
    r1 = load_trace("twitter:sponge", damping=1)
    r2 = load_trace("twitter:sponge", damping=2)
    assert np.array_equal(r2, r1 // 2)
    c = load_trace("twitter:sponge", compress=4)
    assert len(c) == 300 and c.sum() == r1.sum()


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("twitter:nope", "unknown twitter window 'nope'"),
        ("twitter:500-100", "END (100) must be > START (500)"),
        ("bogus:x", "unknown trace 'bogus:x'"),
        ("synthetic:zigzag", "unknown synthetic shape 'zigzag'"),
        ("synthetic:step:abc", "bad synthetic trace"),
    ],
)
def test_bad_trace_specs_name_the_value(spec: str, needle: str) -> None:
    with pytest.raises(TidalError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_trace(spec)


@pytest.mark.shared
def test_out_of_range_window_names_the_trace_length() -> None:
    with pytest.raises(TidalError, match="out of range.*1899061 seconds"):
        load_trace("twitter:1899000-1900000")


def test_missing_trace_names_path_and_synthetic_alternative(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tw, "shared_path", lambda *parts: None)
    with pytest.raises(TidalError, match=r"twitter_2021-08_per_second\.txt.*synthetic:step"):
        load_trace("twitter:bursty")


@pytest.mark.parametrize("shape", ["step", "spike", "ramp", "diurnal", "constant"])
def test_synthetic_shapes_are_seeded(shape: str) -> None:
    a = synthetic_rates(shape, 300, 10, 50, seed=3)
    b = synthetic_rates(shape, 300, 10, 50, seed=3)
    c = synthetic_rates(shape, 300, 10, 50, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c) and len(a) == 300


def test_synthetic_shapes_exact_without_seed() -> None:
    step = synthetic_rates("step", 10, 1, 9, seed=None)
    assert step.tolist() == [1] * 5 + [9] * 5
    spike = synthetic_rates("spike", 100, 1, 9, seed=None)
    assert spike[50] == 9 and spike[0] == 1 and spike.sum() == 90 * 1 + 10 * 9
    ramp = synthetic_rates("ramp", 11, 0, 10, seed=None)
    assert ramp.tolist() == list(range(11))


def test_arrivals_send_exactly_the_integer_counts_within_each_second() -> None:
    rates = np.array([3.0, 0.0, 5.0, 1.0])
    t = arrivals(rates, seed=1)
    assert np.array_equal(np.bincount(np.floor(t).astype(int), minlength=4), [3, 0, 5, 1])
    assert np.all(np.diff(t) >= 0)
    assert np.array_equal(t, arrivals(rates, seed=1))
    assert not np.array_equal(t, arrivals(rates, seed=2))


def test_arrival_chunks_concatenate_to_arrivals() -> None:
    rates = np.full(8000, 2.0)
    whole = arrivals(rates, seed=5)
    parts = np.concatenate(list(arrival_chunks(rates, seed=5, chunk_s=7200)))
    assert np.array_equal(whole, parts) and len(whole) == 16000


def test_fractional_rates_draw_poisson_counts() -> None:
    t = arrivals(np.full(2000, 2.5), seed=0)
    assert abs(len(t) / 2000 - 2.5) < 0.15


def test_to_us_floors_to_microseconds() -> None:
    assert to_us(np.array([0.0000019, 1.5])).tolist() == [1, 1_500_000]


@pytest.mark.shared
def test_dynamic_slos_follow_sponge_formula() -> None:
    from tidal.workload.slo import lte_bandwidth

    bw = lte_bandwidth()
    n = len(bw)
    assert n > 600  # about 10 min of 1-s rows
    t = np.array([0.5, 1.2, n + 0.3])
    got = dynamic_slos(t, slo_ms=1000, image_kb=200)
    want = np.floor(1000 - 200_000 / bw[[0, 1, 0]])
    assert np.array_equal(got, np.maximum(0, want))
    mixed = dynamic_slos(np.arange(1000) / 10, 1000, seed=1)
    assert mixed.min() >= 0 and mixed.max() < 1000 and len(np.unique(mixed)) > 10
    assert np.array_equal(mixed, dynamic_slos(np.arange(1000) / 10, 1000, seed=1))
