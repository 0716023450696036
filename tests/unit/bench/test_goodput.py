"""`tidal bench goodput` bookkeeping: outcome classes, latency from the scheduled send,
Poisson schedules, the done-when verdict (no servers started)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tidal.bench.goodput import classify, poisson_offsets, summarize, verdict
from tidal.workload.loadgen import Outcome


@pytest.mark.parametrize(
    ("status", "error", "lat", "want"),
    [
        (200, "", 150.0, "good"),
        (200, "", 200.0, "good"),
        (200, "", 200.1, "late"),
        (503, '{"error":"predicted finish after deadline","cause":"refused"}', 1.0, "refused"),
        (429, "", 1.0, "refused"),
        (504, "", 1.0, "expired"),
        (408, "", 1.0, "expired"),
        (400, "Request timeout expired", 1.0, "expired"),
        (503, "request timeout expired", 1.0, "expired"),
        (0, "TimeoutError: ", math.inf, "late"),
        (0, "ClientConnectorError: refused", math.inf, "error"),
        (500, "boom", 1.0, "error"),
    ],
)
def test_classify(status: int, error: str, lat: float, want: str) -> None:
    assert classify(status, error, lat, 200.0) == want


def test_latency_counts_from_the_scheduled_send() -> None:
    # Sent 150 ms after its schedule, answered 100 ms later: 250 ms > 200 ms SLO -> late.
    o_late = Outcome(0, scheduled_s=1.0, sent_s=1.15, latency_ms=100.0, status=200)
    o_good = Outcome(1, scheduled_s=2.0, sent_s=2.0, latency_ms=100.0, status=200)
    o_ref = Outcome(2, scheduled_s=3.0, sent_s=3.0, latency_ms=1.0, status=503)
    s = summarize([o_late, o_good, o_ref], 200.0, duration_s=2.0)
    assert (s["good"], s["late"], s["refused"]) == (1, 1, 1)
    assert s["goodput"] == 0.5
    assert s["p50_ms"] == pytest.approx(100.0)
    assert s["in_slo_of_200s"] == 0.5


def test_poisson_offsets_rate_and_range() -> None:
    t = np.array(poisson_offsets(50.0, 40.0, seed=3))
    assert t.min() >= 0 and t.max() < 40.0 and np.all(np.diff(t) >= 0)
    assert abs(len(t) / 40.0 - 50.0) < 5.0  # 2000 arrivals: sd ~ 1.1/s
    assert poisson_offsets(50.0, 40.0, seed=3) == tuple(t)  # same seed, same schedule


def _lv(good: float, in_slo: float = 1.0) -> dict[str, float]:
    return {"goodput": good, "in_slo_of_200s": in_slo}


def test_verdict() -> None:
    res = {
        "servers": {
            "tidal": {"levels": {"0.9": _lv(10.0), "2.0": _lv(9.5, 0.995)}},
            "triton": {"levels": {"0.9": _lv(10.0), "2.0": _lv(3.0)}},
        }
    }
    v = verdict(res)
    assert v["tidal_2x_ok"] and v["tidal_ahead_at_every_level"]
    res["servers"]["triton"]["levels"]["2.0"] = _lv(9.6)
    res["servers"]["tidal"]["levels"]["2.0"] = _lv(8.0, 0.995)
    v = verdict(res)
    assert not v["tidal_2x_ok"] and not v["tidal_ahead_at_every_level"]
    assert v["best_peer_at_2.0x"] == ("triton", 9.6)
