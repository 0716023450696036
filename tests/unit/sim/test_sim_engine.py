"""The simulation loop: conservation, determinism, nodes and pending replicas, cold starts,
in-place resize vs Recreate, pipelines, and plans that can never fit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from sim_scripted import Scripted

from tidal.core.errors import TidalError
from tidal.core.pipeline import PipelineSpec, StageSpec
from tidal.core.plan import Plan
from tidal.core.profile import LatencyFit, ProfileSet, VariantProfile
from tidal.planners.base import PlanContext
from tidal.sim.config import SimConfig
from tidal.sim.engine import simulate
from tidal.workload import synthetic_rates


def profile(name: str, acc: float, gamma: float = 20.0, load_s: float = 5.0) -> VariantProfile:
    fit = LatencyFit(gamma=gamma, delta=1.0, epsilon=5.0, eta=1.0, p99_ratio=1.3)
    return VariantProfile(name=name, accuracy=acc, load_time_s=load_s, resize_s=0.5, fit=fit)


PROFILES = ProfileSet(
    variants={
        "a": profile("a", 0.6),
        "b": profile("b", 0.8, gamma=40.0),
        "x": profile("x", 0.9, gamma=5.0),
    }
)
ONE = PipelineSpec(name="one", stages=[StageSpec(name="s", task="t", variants=["a"])])
TWO = PipelineSpec(
    name="two",
    stages=[
        StageSpec(name="s1", task="t", variants=["a", "b"]),
        StageSpec(name="s2", task="t", variants=["x"]),
    ],
)


def csv_rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()[1:]]


def test_conservation_every_request_ends_exactly_once(tmp_path: Path) -> None:
    rates = synthetic_rates("spike", 120, 20, 400, seed=1)
    out = tmp_path / "o.csv"
    r = simulate(
        ONE, PROFILES, rates, "static", SimConfig(slo_ms=300, mode="reference"), csv_path=out,
        policy_kwargs={"replicas": 2, "cores": 2, "batch": 4},
    )  # fmt: skip
    rows = csv_rows(out)
    ids = [int(x[0]) for x in rows]
    assert len(ids) == len(set(ids)) == r.requests == int(rates.sum())
    assert sorted(ids) == list(range(r.requests))
    assert sum(r.counts.values()) == r.requests
    assert r.counts["refused"] > 0  # the spike overloads 2 replicas: admission refuses
    for row in rows:
        if row[4] in ("ok", "late"):
            assert float(row[3]) >= float(row[1])
        if row[4] == "ok":
            assert float(row[3]) <= float(row[2]) + 1e-6


@pytest.mark.parametrize("mode", ["reference", "fast"])
def test_determinism_under_seed(mode: Literal["fast", "reference"]) -> None:
    rates = synthetic_rates("ramp", 90, 10, 200, seed=2)

    def run(seed: int) -> dict[str, Any]:
        return simulate(ONE, PROFILES, rates, "hpa", SimConfig(seed=seed, mode=mode)).summary()

    a, b, c = run(1), run(1), run(2)
    a.pop("decision_ms_mean"), b.pop("decision_ms_mean"), c.pop("decision_ms_mean")
    assert a == b
    assert a != c


def test_cold_start_delays_new_replicas_and_counts_their_cores() -> None:
    small = Plan.single("s", "a", 1, 1.0, 1)
    big = Plan.single("s", "a", 3, 1.0, 1)
    planner = Scripted([small, big], [0.0, 10.0])
    r = simulate(ONE, PROFILES, np.full(30, 5.0), planner, SimConfig(drain_s=0))
    assert r.replica_starts == 2
    t, reps, cores = r.series["sample_t"], r.series["replicas"], r.series["cores"]
    # Starting replicas hold their cores from t=10 (placed at once).
    assert cores[t.tolist().index(9.0)] == 1.0 and cores[t.tolist().index(10.0)] == 3.0
    assert reps[t.tolist().index(10.0)] == 3
    assert r.core_seconds == pytest.approx(10 * 1 + 20 * 3)


def test_pending_replicas_wait_for_node_capacity() -> None:
    plan = Plan.single("s", "a", 4, 3.0, 1)
    r = simulate(
        ONE, PROFILES, np.full(20, 5.0), Scripted([plan], [0.0]),
        SimConfig(nodes=2, cores_per_node=7.0, drain_s=0),
    )  # fmt: skip
    # 2 replicas of 3 cores per 7-core node: the 4 fit (3+3 <= 7 twice), a 5th would pend.
    assert r.series["replicas"].max() == 4
    plan5 = Plan.single("s", "a", 5, 3.0, 1)
    r5 = simulate(
        ONE, PROFILES, np.full(20, 5.0), Scripted([plan5], [0.0]),
        SimConfig(nodes=2, cores_per_node=7.0, drain_s=0),
    )  # fmt: skip
    assert r5.series["replicas"].max() == 4 and r5.core_seconds == pytest.approx(20 * 12)


def test_plan_that_can_never_fit_names_it() -> None:
    plan = Plan.single("s", "a", 1, 32.0, 1)
    with pytest.raises(TidalError, match=r"can never fit.*32.0 cores per replica.*16.0 cores"):
        simulate(ONE, PROFILES, np.full(5, 1.0), Scripted([plan], [0.0]), SimConfig())


@pytest.mark.parametrize(("mode", "restarts"), [("in_place", 0), ("recreate", 1)])
def test_resize_in_place_vs_recreate(mode: str, restarts: int) -> None:
    p1 = Plan.single("s", "a", 1, 1.0, 1)
    p2 = Plan.single("s", "a", 1, 2.0, 1)
    planner = Scripted([p1, p2], [0.0, 10.0], resize_mode=mode)
    r = simulate(ONE, PROFILES, np.full(40, 10.0), planner, SimConfig(drain_s=0))
    assert r.recreates == restarts
    assert r.replica_starts == restarts  # Recreate pays a cold start (5 s load time)
    assert r.resizes == 1 - restarts
    if restarts:
        assert r.counts["refused"] > 0  # no ready replica while the new pod loads
    else:
        assert r.counts["refused"] == 0


def test_two_stage_pipeline_with_variant_weights_and_product_accuracy(tmp_path: Path) -> None:
    plan = Plan(
        stages=(
            Plan.single("s1", "a", 1, 2.0, 2)
            .stages[0]
            .model_copy(
                update={
                    "variants": (
                        Plan.single("s1", "a", 1, 2.0, 2)
                        .stages[0]
                        .variants[0]
                        .model_copy(update={"weight": 0.5}),
                        Plan.single("s1", "b", 1, 2.0, 2)
                        .stages[0]
                        .variants[0]
                        .model_copy(update={"weight": 0.5}),
                    )
                }
            ),
            Plan.single("s2", "x", 1, 2.0, 2).stages[0],
        )
    )
    out = tmp_path / "two.csv"
    r = simulate(TWO, PROFILES, np.full(30, 10.0), Scripted([plan], [0.0]), SimConfig(), out)
    assert r.requests == 300 and r.counts["ok"] == 300
    # Smooth weighted round-robin splits 50/50: accuracy = mean(0.6, 0.8) * 0.9.
    assert r.mean_accuracy == pytest.approx(0.5 * (0.6 + 0.8) * 0.9)
    # End-to-end latency covers both stages: at least l_a(1,2) + l_x(1,2).
    assert r.p50_ms >= PROFILES.get("a").latency_ms(1, 2) + PROFILES.get("x").latency_ms(1, 2)


def test_control_loop_runs_at_the_planner_interval() -> None:
    calls: list[float] = []

    @dataclass
    class Probe:
        name: str = "probe"
        interval_s: float = 7.0

        def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
            calls.append(ctx.now)
            assert len(ctx.rate_history) == (60 if ctx.now == 0 else min(int(ctx.now), 1200))
            return Plan.single("s", "a", 1, 1.0, 1), None

    simulate(ONE, PROFILES, np.full(30, 2.0), Probe(), SimConfig(drain_s=0))
    assert calls == [0.0, 7.0, 14.0, 21.0, 28.0]


def test_rate_history_counts_the_drain_as_zero_rate_seconds() -> None:
    """After the trace's last second the planner sees 0-rate seconds appended, as a live
    monitor would, not a history frozen at the trace's end."""
    seen: dict[float, tuple[float, ...]] = {}

    @dataclass
    class Probe:
        name: str = "probe"
        interval_s: float = 5.0

        def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
            seen[ctx.now] = ctx.rate_history
            return Plan.single("s", "a", 1, 1.0, 1), None

    simulate(ONE, PROFILES, np.full(10, 3.0), Probe(), SimConfig(drain_s=12))
    late = [t for t in seen if t >= 15.0]
    assert late, sorted(seen)
    for t in late:
        h = seen[t]
        assert len(h) == int(t), (t, len(h))
        assert sum(h[:10]) == pytest.approx(30.0) and all(r == 0.0 for r in h[10:]), (t, h)
