"""Pure parts of `tidal validate` and `tidal demo`: comparison, slowdown, capacity, setup."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tidal.control.demo import make_setup, pipeline_capacity, serve_config
from tidal.control.validate import compare, live_slowdown
from tidal.core.pipeline import PipelineSpec
from tidal.core.profile import LatencyFit, ProfileSet, VariantProfile

FAST = VariantProfile(name="a", fit=LatencyFit(gamma=10, delta=0, epsilon=0, eta=0))
SLOW = VariantProfile(name="b", fit=LatencyFit(gamma=20, delta=0, epsilon=0, eta=0))


def test_compare_and_agreement() -> None:
    live = {"slo_violation_rate": 0.05, "p99_ms": 110.0, "core_seconds": 105.0}
    sim = {"slo_violation_rate": 0.04, "p99_ms": 100.0, "core_seconds": 100.0}
    c = compare(live, sim)
    assert c.violation_pp == pytest.approx(1.0)
    assert c.p99_rel == pytest.approx(0.1) and c.core_s_rel == pytest.approx(0.05)
    assert c.agrees
    c = compare({**live, "slo_violation_rate": 0.2}, sim)
    assert not c.agrees and c.to_dict()["diff"]["violation_rate_pp"] == pytest.approx(16.0)


def test_live_slowdown_is_the_mean_logged_factor() -> None:
    decisions: list[dict[str, Any]] = [
        {"inputs": {}},
        {"inputs": {"slowdown": {"s": 2.0}}},
        {"inputs": {"slowdown": {"s": 3.0, "t": 1.0}}},
    ]
    assert live_slowdown(decisions) == {"s": 2.5, "t": 1.0}


def test_pipeline_capacity_is_the_bottleneck_stage() -> None:
    # One core each: a = 100 req/s (10 ms), b = 50 req/s (20 ms) -> 50; on 3 cores, b gets 2.
    assert pipeline_capacity([FAST, SLOW], 2.0, slo_ms=1000) == pytest.approx(50.0)
    assert pipeline_capacity([FAST, SLOW], 3.0, slo_ms=1000) == pytest.approx(100.0)
    assert pipeline_capacity([FAST, SLOW], 2.0, slo_ms=1.0) == 0.0


def test_demo_setup_sizes_the_surge_to_the_machine() -> None:
    spec = PipelineSpec.model_validate(
        {"name": "p", "stages": [{"name": "x", "task": "t", "variants": ["a"]}]}
    )
    ps = ProfileSet(variants={"a": FAST})
    import tidal.control.demo as demo

    orig = demo.find_pipeline
    demo.find_pipeline = lambda path=None: (spec, "p.yaml")  # type: ignore[assignment]
    try:
        s = make_setup(slo_ms=500, compress=8, peak_load=0.5, profiles=ps, reserve=0.0)
    finally:
        demo.find_pipeline = orig  # type: ignore[assignment]
    cap = pipeline_capacity([FAST], s.cores, 500)
    peak_60s = max(
        sum(s.rates[i : i + 8]) / 8 for i in range(len(s.rates) - 8)
    )  # ~60 s of the original trace
    assert peak_60s == pytest.approx(0.5 * cap, rel=0.3)
    assert len(s.schedule.offsets) > 0 and set(s.schedule.budgets_ms) == {500.0}
    cfg = serve_config(spec, 500)
    assert cfg["plan"]["stages"][0] == {
        "stage": "x",
        "variants": [{"name": "a"}],
        "replicas": 1,
        "cores": 0.5,
        "batch": 1,
    }
    assert not math.isnan(s.slo_ms)
