"""`tidal validate`'s like-for-like comparison: the live decisions replayed on the simulated
data plane (`ReplayPlanner`), and the first decision where two controllers part
(`divergence`)."""

from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any

import numpy as np
import pytest

from tidal.apps.validate_replay import (
    ReplayPlanner,
    actions_differ,
    divergence,
)
from tidal.control.decisions import DecisionLog, plan_from_summary, plan_summary
from tidal.core.pipeline import PipelineSpec, StageSpec
from tidal.core.plan import Plan, StagePlan, VariantWeight
from tidal.core.profile import LatencyFit, ProfileSet, VariantProfile
from tidal.sim.config import SimConfig
from tidal.sim.engine import simulate

FIT_A = LatencyFit(gamma=20.0, delta=1.0, epsilon=5.0, eta=1.0, p99_ratio=1.3)
FIT_B = LatencyFit(gamma=12.0, delta=0.5, epsilon=3.0, eta=1.0, p99_ratio=1.3)
PROFILES = ProfileSet(
    variants={
        "a": VariantProfile(name="a", accuracy=0.6, fit=FIT_A),
        "b": VariantProfile(name="b", accuracy=0.7, fit=FIT_B),
    }
)
TWO = PipelineSpec(
    name="two",
    stages=[
        StageSpec(name="s", task="t", variants=["a"]),
        StageSpec(name="u", task="t", variants=["b"]),
    ],
)
# A surge: 10 req/s, then 60, then back to 15.
RATES = np.concatenate([np.full(20, 10.0), np.full(25, 60.0), np.full(25, 15.0)])


def test_plan_from_summary_round_trips_the_decision_log() -> None:
    plan = Plan(
        stages=(
            StagePlan(
                stage="s", variants=(VariantWeight(name="a"),), replicas=3, cores=1.5, batch=4
            ),
            StagePlan(
                stage="u",
                variants=(
                    VariantWeight(name="a", weight=0.25, replicas=1),
                    VariantWeight(name="b", weight=0.75, replicas=2),
                ),
                replicas=3,
                cores=1.0,
                batch=2,
            ),
        ),
        feasible=False,
        reason="why",
    )
    summary = plan_summary(plan)
    assert summary is not None
    back = plan_from_summary(summary, False, "why")
    assert plan_summary(back) == summary
    assert back.stages[0] == plan.stages[0] and not back.feasible and back.reason == "why"


def _closed_loop(policy: str, seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    log = DecisionLog(keep=1 << 16)
    cfg = SimConfig(nodes=1, cores_per_node=4, slo_ms=500, seed=seed, mode="reference")
    res = simulate(TWO, PROFILES, RATES, policy, cfg, decisions=log)
    return res.summary(), [asdict(d) for d in log.entries]


@pytest.mark.parametrize("policy", ["themis", "hpa"])
def test_replaying_a_runs_own_decisions_reproduces_the_run(policy: str) -> None:
    summary, decisions = _closed_loop(policy, seed=3)
    applied = [d for d in decisions if d["action"] == "applied"]
    assert len(applied) >= 2  # the surge makes the policy change its plan
    interval = 15.0 if policy == "hpa" else 1.0
    replay = ReplayPlanner(policy, interval, decisions, lead_s=0.0)
    log = DecisionLog(keep=1 << 16)
    cfg = SimConfig(nodes=1, cores_per_node=4, slo_ms=500, seed=3, mode="reference")
    res = simulate(TWO, PROFILES, RATES, replay, cfg, decisions=log).summary()
    assert replay.used == len(decisions)  # every tick found its decision
    for k in ("slo_violation_rate", "core_seconds", "p99_ms", "violations", "resizes"):
        assert res[k] == summary[k], k
    again = [asdict(d) for d in log.entries]
    assert [(d["t"], d["action"], d["output"]) for d in again] == [
        (d["t"], d["action"], d["output"]) for d in decisions
    ]
    assert divergence(decisions, again, 0.0) is None
    assert actions_differ(decisions, again, 0.0) == 0
    again[applied[1]["seq"] - 1]["action"] = "kept-last-feasible"
    assert actions_differ(decisions, again, 0.0) == 1


def test_replay_keeps_the_plan_in_force_between_live_decisions() -> None:
    _, decisions = _closed_loop("themis", seed=1)
    first = decisions[0]
    replay = ReplayPlanner("themis", 1.0, [first], lead_s=0.0)
    assert replay.live_plan(0.0) is not None and replay.live_plan(5.0) is None


def test_divergence_names_the_first_decision_that_differs_and_what_each_side_saw() -> None:
    _, live = _closed_loop("themis", seed=2)
    sim = copy.deepcopy(live)
    k = next(i for i, d in enumerate(sim) if d["action"] == "applied" and i > 0)
    sim[k]["output"][0]["batch"] += 1
    sim[k]["inputs"]["rate"] = 123.0
    div = divergence(live, sim, 0.0)
    assert div is not None and div.index == k and div.t == pytest.approx(live[k]["t"])
    assert div.sim["rate"] == 123.0 and div.live["rate"] == live[k]["inputs"]["rate"]
    assert div.sim["plan"][0]["batch"] == div.live["plan"][0]["batch"] + 1
    # A live log whose first decision came `lead` before the load (live decision k at trace
    # time k - lead) aligns to the simulated ticks (0, then k - lead): the same decisions.
    lead = 0.4
    live_clock = [dict(d, t=d["t"] + 1000.0) for d in live]
    sim_ticks = [dict(d, t=max(0.0, d["t"] - lead)) for d in live]
    assert divergence(live_clock, sim_ticks, lead) is None
    sim_ticks[k] = sim[k] | {"t": sim_ticks[k]["t"]}
    got = divergence(live_clock, sim_ticks, lead)
    assert got is not None and got.index == k
