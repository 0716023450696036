"""Pure parts of `tidal validate` and `tidal demo`: comparison, slowdown, capacity, setup."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from tidal.apps.demo import make_setup, pipeline_capacity, serve_config
from tidal.apps.validate import compare, live_slowdown
from tidal.core.pipeline import PipelineSpec
from tidal.core.profile import LatencyFit, ProfileSet, VariantProfile

FAST = VariantProfile(name="a", fit=LatencyFit(gamma=10, delta=0, epsilon=0, eta=0))
SLOW = VariantProfile(name="b", fit=LatencyFit(gamma=20, delta=0, epsilon=0, eta=0))


def test_compare_and_agreement() -> None:
    live = {"slo_violation_rate": 0.049, "p99_ms": 109.0, "core_seconds": 101.9}
    sim = {"slo_violation_rate": 0.04, "p99_ms": 100.0, "core_seconds": 100.0}
    c = compare(live, sim)
    assert c.violation_pp == pytest.approx(0.9)
    assert c.p99_rel == pytest.approx(0.09) and c.core_s_rel == pytest.approx(0.019)
    assert c.agrees  # the targets: 1 pp, 10%, 2% (issue 11)
    c = compare({**live, "slo_violation_rate": 0.2}, sim)
    assert not c.agrees and c.to_dict()["diff"]["violation_rate_pp"] == pytest.approx(16.0)
    assert not compare({**live, "p99_ms": 111.0}, sim).agrees
    assert not compare({**live, "core_seconds": 102.5}, sim).agrees


def test_live_slowdown_undoes_the_smoothing_and_weights_by_rate() -> None:
    from tidal.control.controller import SLOWDOWN_SMOOTHING as A

    # Logged: the controller's EWMA; measured factors 1.0 (at a trickle) then 2.0 twice.
    s1 = 1.0
    s2 = s1 + A * (2.0 - s1)
    s3 = s2 + A * (2.0 - s2)
    decisions: list[dict[str, Any]] = [
        {"inputs": {}},
        {"inputs": {"slowdown": {"s": s1}, "stages": [{"stage": "s", "rate": 1.0}]}},
        {"inputs": {"slowdown": {"s": s2, "t": 1.0}, "stages": [{"stage": "s", "rate": 9.0}]}},
        {"inputs": {"slowdown": {"s": s3, "t": 3.0}, "stages": [{"stage": "s", "rate": 10.0}]}},
    ]
    out = live_slowdown(decisions)
    assert out["s"] == pytest.approx((1.0 * 1 + 2.0 * 9 + 2.0 * 10) / 20)
    # No rate logged for t: the plain mean of its measured factors (1, then 1 + 2/A).
    assert out["t"] == pytest.approx((1.0 + min(10.0, 1.0 + 2.0 / A)) / 2)


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
    import tidal.apps.demo as demo

    orig = demo.find_pipeline
    demo.find_pipeline = lambda path=None: (spec, "p.yaml")
    try:
        s = make_setup(slo_ms=500, compress=8, peak_load=0.5, profiles=ps, reserve=0.0)
    finally:
        demo.find_pipeline = orig
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


@pytest.mark.shared  # the schedule is built from the twitter trace
def test_control_lead_is_recovered_from_the_logged_rates() -> None:
    from tidal.apps.validate import control_lead_s, make_validate_setup

    setup = make_validate_setup("twitter:bursty", None, 500.0, 60, 8, 90.0, 0)
    off = np.sort(np.asarray(setup.schedule.offsets))
    lead = 1.5
    decisions = []
    for k in range(0, 90, 3):  # hpa: 15 s window; decisions every 3 s of controller time
        t = float(k)
        n = np.sum((off > t - lead - 15.0) & (off <= t - lead))
        decisions.append({"t": 100.0 + t, "inputs": {"stages": [
            {"stage": setup.pipeline.stages[0].name, "rate": n / 15.0}]}})  # fmt: skip
    assert control_lead_s(decisions, setup, "hpa") == pytest.approx(lead, abs=0.05)
    assert control_lead_s([], setup, "hpa") == 0.0


def test_live_core_seconds_over_the_simulators_window() -> None:
    """Readings are the monitor's (sample time + its last sample's offset), deduplicated;
    the window's ends are interpolated between readings and extended at the edge rates."""
    from tidal.apps.demo import core_readings, core_seconds_between

    def sample(t: float, offset: float, core_s: float) -> dict[str, Any]:
        st = {"t": [offset], "totals": {"core_s": core_s}}
        return {"t": t, "data": {"stages": [st, {**st, "totals": {"core_s": 0.0}}]}}

    series = [
        {"t": 0.0, "data": {"stages": [{"t": [], "totals": {"core_s": 0.0}}]}},  # no reading
        sample(1.0, -0.5, 10.0),  # read at 0.5 s: 1 core until 2.5 s
        sample(2.2, -0.7, 11.0),  # the reading of 1.5 s, again
        sample(2.5, 0.0, 12.0),
        sample(3.6, -0.1, 15.0),  # 3 cores from 2.5 s
    ]
    r = core_readings(series)
    assert [t for t, _ in r] == pytest.approx([0.5, 1.5, 2.5, 3.5])
    assert [c for _, c in r] == [10.0, 11.0, 12.0, 15.0]
    assert core_seconds_between(r, 1.0, 3.0) == pytest.approx(1.5 * 1 + 0.5 * 3)
    assert core_seconds_between(r, 0.0, 4.0) == pytest.approx(2.5 * 1 + 1.5 * 3)
    assert math.isnan(core_seconds_between(r[:1], 0.0, 1.0))


def test_slowdown_schedule_places_each_measurement_at_its_window_on_the_trace() -> None:
    from tidal.apps.validate import slowdown_schedule
    from tidal.control.controller import SLOWDOWN_SMOOTHING as A

    # Controller started at t=100, 2 s before the load; measured 2.0 at 105, 4.0 at 107
    # (logged as the EWMA); nothing measured for "b"; 106 repeats 105's value (no batches).
    e1 = 2.0
    e2 = e1 + A * (4.0 - e1)
    decisions: list[dict[str, Any]] = [
        {"t": 100.0, "inputs": {}},
        {"t": 105.0, "inputs": {"slowdown": {"a": e1}}},
        {"t": 106.0, "inputs": {"slowdown": {"a": e1}}},
        {"t": 107.0, "inputs": {"slowdown": {"a": e2}}},
    ]
    out = slowdown_schedule(decisions, ["a", "b"], lead_s=2.0, window_s=1.0, span=1)
    # At trace time 105 - 100 - 2 - 1 = 2 s (held back to 0: the first factor) and 4 s.
    assert out == [(0.0, [2.0, 1.0]), (4.0, [pytest.approx(4.0), 1.0])]
    # Centred means over 3 measurements: both points become their mean.
    out = slowdown_schedule(decisions, ["a", "b"], lead_s=2.0, window_s=1.0, span=3)
    assert [row[0] for _, row in out] == [pytest.approx(3.0)]
    assert slowdown_schedule([{"t": 1.0, "inputs": {}}], ["a"], 0.0) == []


def test_live_cold_start_is_read_from_the_decisions_that_added_replicas() -> None:
    from tidal.apps.validate import live_start_times, make_validate_setup, scaled_profiles

    def stage(name: str, variant: str, n: int, cores: float = 0.5) -> dict[str, Any]:
        vs = [{"name": variant, "replicas": n}]
        return {"stage": name, "variants": vs, "replicas": n, "cores": cores}

    one = [stage("classify", "resnet18", 1), stage("nlp", "bert-tiny", 1)]
    two = [stage("classify", "resnet18", 2), stage("nlp", "bert-tiny", 1)]
    both = [stage("classify", "resnet18", 3), stage("nlp", "bert-tiny", 2)]
    bigger = [stage("classify", "resnet18", 2, 1.0), stage("nlp", "bert-tiny", 1)]
    decisions: list[dict[str, Any]] = [
        {"action": "applied", "inputs": {"current": one}, "output": two, "time_to_effect_s": 1.2},
        {"action": "applied", "inputs": {"current": two}, "output": one, "time_to_effect_s": 0.0},
        {"action": "applied", "inputs": {"current": one}, "output": two, "time_to_effect_s": 1.6},
        # two stages grew at once: whose start it was is unknown, not counted
        {"action": "applied", "inputs": {"current": two}, "output": both, "time_to_effect_s": 9},
        # a resize only, and a decision kept out: not counted
        {"action": "applied", "inputs": {"current": two}, "output": bigger, "time_to_effect_s": 0},
        {"action": "kept-last-feasible", "inputs": {"current": one}, "output": two},
    ]
    got = live_start_times(decisions)
    assert got == {"resnet18": pytest.approx(1.4)}
    assert live_start_times([{"action": "unchanged", "inputs": {}}]) == {}
    setup = make_validate_setup("synthetic:spike:60:5:20", None, 500.0, None, 1, 10.0, 0)
    ps = scaled_profiles(setup, {}, start_s=got)
    assert ps.variants["resnet18"].load_time_s == pytest.approx(1.4)
    assert ps.variants["bert-tiny"].load_time_s == setup.profiles.variants["bert-tiny"].load_time_s


def _log(t0: float, raws: list[float], stage: str = "a") -> list[dict[str, Any]]:
    """A decision log (the smoothed factor, as the controller logs it) measuring `raws` at
    t0 + 1, t0 + 2, ..."""
    from tidal.control.controller import SLOWDOWN_SMOOTHING as A

    out: list[dict[str, Any]] = [{"t": t0, "inputs": {}}]
    e: float | None = None
    for i, r in enumerate(raws):
        e = r if e is None else e + A * (r - e)
        out.append({"t": t0 + 1 + i, "inputs": {"slowdown": {stage: e}}})
    return out


def test_fit_speed_solves_for_the_speed_that_the_simulated_controller_measures_as_live() -> None:
    from tidal.apps.validate import fit_speed, held_slowdowns, schedule_points

    log = _log(100.0, [1.2, 2.4, 2.0])
    live = schedule_points(log, ["a"], lead_s=0.0, window_s=1.0)
    held = held_slowdowns(log, 100.0, 1.0)  # what the live controller planned with
    assert [round(t, 6) for t, _ in live["a"]] == [0.0, 1.0, 2.0]
    calls: list[list[tuple[float, list[float]]]] = []

    def run(sched: list[tuple[float, list[float]]]) -> tuple[str, list[dict[str, Any]]]:
        # A simulated machine whose batches measure half the speed factor (a quota's burst;
        # above the controller's lower bound on a measurement, 0.5).
        calls.append(sched)
        at = {round(t): f[0] for t, f in sched}
        speed = [at.get(k, sched[-1][1][0]) for k in range(3)]
        return f"run{len(calls)}", _log(0.0, [0.5 * s for s in speed])

    res, sched, err = fit_speed(live, held, ["a"], 1.0, run, rounds=3)
    # Round 1 simulates the live factors; round 2 their doubles, which reproduce them exactly.
    assert [t for t, _ in calls[0]] == [0.0, 1.0, 2.0]
    assert [f[0] for _, f in calls[0]] == pytest.approx([1.2, 2.4, 2.0])
    # the same smoothed slowdowns as live at every decision: the best round
    assert res == "run2" and err == pytest.approx(0.0, abs=1e-12)
    assert [f[0] for _, f in sched] == pytest.approx([2.4, 4.8, 4.0])
    assert len(calls) == 3
