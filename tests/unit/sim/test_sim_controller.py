"""The simulator runs the live Controller: the same observation record (VPA's per-second
usage samples), the same plan-handling rule, its decision log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pytest

from tidal.control import controller as live_controller
from tidal.core.pipeline import PipelineSpec, StageSpec
from tidal.core.plan import Plan
from tidal.core.profile import LatencyFit, ProfileSet, VariantProfile
from tidal.planners.base import PlanContext
from tidal.sim import engine
from tidal.sim.config import SimConfig
from tidal.sim.engine import simulate

FIT = LatencyFit(gamma=20.0, delta=1.0, epsilon=5.0, eta=1.0, p99_ratio=1.3)
PROFILES = ProfileSet(variants={"a": VariantProfile(name="a", accuracy=0.6, fit=FIT)})
ONE = PipelineSpec(name="one", stages=[StageSpec(name="s", task="t", variants=["a"])])


@dataclass
class Recorder:
    """A planner that keeps 2 x 1 core and records what it was shown."""

    name: str = "recorder"
    interval_s: float = 60.0
    window_s: float = 60.0
    resize_mode: str = "in_place"
    seen: list[PlanContext] = field(default_factory=list)

    def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
        self.seen.append(ctx)
        return Plan.single("s", "a", 2, 1.0, 4), None


@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_planner_sees_one_usage_sample_per_second_as_live(
    mode: Literal["fast", "reference"],
) -> None:
    rec = Recorder()
    simulate(ONE, PROFILES, np.full(130, 20.0), rec, SimConfig(drain_s=0, mode=mode))
    assert [c.now for c in rec.seen] == [0.0, 60.0, 120.0]
    assert rec.seen[0].observations == () and len(rec.seen[0].rate_history) == 60
    obs = rec.seen[1].observations[0]
    assert len(obs.usage_samples) == 60  # VPA's samples: one per second of the window
    assert sum(obs.usage_samples) / 60 == pytest.approx(obs.cpu_usage_cores)
    assert obs.arrival_rate == pytest.approx(20.0, rel=0.15)
    assert 0 < obs.cpu_utilization < 1 and len(rec.seen[1].rate_history) == 60


def test_the_simulator_calls_the_live_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[live_controller.Controller] = []

    class Spy(live_controller.Controller):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(engine, "Controller", Spy)
    small = Plan.single("s", "a", 1, 1.0, 1)
    flagged = {"feasible": False, "reason": "overload"}
    most = Plan.single("s", "a", 2, 1.0, 1).model_copy(update=flagged)  # fits 16 cores
    bad = Plan.single("s", "a", 20, 1.0, 1).model_copy(update=flagged)  # does not

    @dataclass
    class Three:
        name: str = "three"
        interval_s: float = 10.0
        resize_mode: str = "in_place"

        def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
            return (small if ctx.now < 10 else most if ctx.now < 20 else bad), None

    r = simulate(ONE, PROFILES, np.full(30, 5.0), Three(), SimConfig(drain_s=0))
    (c,) = made
    ds = c.decisions.recent(10)
    assert [d["action"] for d in ds] == ["applied", "applied", "kept-last-feasible"]
    assert not ds[1]["feasible"] and ds[1]["reason"] == "overload"
    # the flagged plan that fits ran (the live rule); the 20-replica one never did
    assert r.core_seconds == pytest.approx(10.0 + 2 * 20.0)


@dataclass
class StageRecorder:
    """Keeps 2 x 1 core, batch 4, and records the candidates' first fit it was shown."""

    name: str = "stage-recorder"
    interval_s: float = 1.0
    resize_mode: str = "in_place"
    gammas: list[float] = field(default_factory=list)

    def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
        self.gammas.append(ctx.stages[0].variants[0].fit.gamma)
        return Plan.single("s", "a", 2, 1.0, 4), None


def test_calibration_learns_the_true_slowdown_from_simulated_batches() -> None:
    """The planner starts from the profile the system believes (`predict_profiles`) and, with
    `calibrate`, the live controller's calibration scales it by the simulated batches'
    measured service time over the profile's: here the truth is 2x slower."""
    slow = FIT.model_copy(
        update={k: 2.0 * getattr(FIT, k) for k in ("gamma", "delta", "epsilon", "eta")}
    )
    truth = ProfileSet(variants={"a": VariantProfile(name="a", accuracy=0.6, fit=slow)})
    rates = np.full(40, 15.0)
    rec = StageRecorder()
    cfg = SimConfig(drain_s=0, mode="reference", calibrate=True, seed=1)
    simulate(ONE, truth, rates, rec, cfg, predict_profiles=PROFILES)
    assert rec.gammas[0] == FIT.gamma  # learned, not known from the start
    assert rec.gammas[-1] / FIT.gamma == pytest.approx(2.0, rel=0.1)
    # Without calibration the planner keeps the believed profile; without a believed one
    # it plans with the simulated truth (and learns nothing more: the ratio is ~1).
    off = StageRecorder()
    simulate(ONE, truth, rates, off, cfg.model_copy(update={"calibrate": False}),
             predict_profiles=PROFILES)  # fmt: skip
    assert set(off.gammas) == {FIT.gamma}
    same = StageRecorder()
    simulate(ONE, truth, rates, same, cfg)
    assert same.gammas[0] == slow.gamma
    assert same.gammas[-1] / slow.gamma == pytest.approx(1.0, abs=0.1)
