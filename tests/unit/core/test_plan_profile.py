import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from tidal.core import LatencyFit, Plan, ProfileSet, SimClock, StagePlan, VariantWeight
from tidal.core.errors import TidalError
from tidal.core.profile import VariantProfile


def test_plan_weights_must_sum_to_one() -> None:
    with pytest.raises(ValidationError, match="sum to 1"):
        StagePlan(
            stage="s",
            variants=(VariantWeight(name="a", weight=0.5), VariantWeight(name="b", weight=0.4)),
            replicas=1,
            cores=1,
            batch=1,
        )


def test_plan_totals_and_json_roundtrip() -> None:
    sp = StagePlan(
        stage="s",
        variants=(
            VariantWeight(name="a", weight=0.25, replicas=2, cores=0.5),
            VariantWeight(name="b", weight=0.75),
        ),
        replicas=1,
        cores=2,
        batch=4,
    )
    plan = Plan(stages=(sp,))
    assert plan.total_cores == pytest.approx(2 * 0.5 + 1 * 2)
    assert Plan.model_validate_json(plan.model_dump_json()) == plan
    with pytest.raises(KeyError, match="unknown stage 'x'"):
        plan.stage("x")


def test_latency_fit_matches_sponge_formula() -> None:
    fit = LatencyFit(gamma=18.3, delta=4.49, epsilon=45.5, eta=1.05)
    assert fit.latency_ms(4, 2) == pytest.approx(18.3 * 2 + 4.49 * 4 + 45.5 / 2 + 1.05)
    with pytest.raises(ValueError):
        fit.latency_ms(1, 0)


def test_profile_set_corrupt_file_names_problem(tmp_path: Path) -> None:
    p = tmp_path / "p.json"
    p.write_text("{not json")
    with pytest.raises(TidalError, match="corrupt profile file"):
        ProfileSet.load(p)
    p.write_text(json.dumps({"format_version": 99}))
    with pytest.raises(TidalError, match="format_version 99"):
        ProfileSet.load(p)
    fit = LatencyFit(gamma=1, delta=1, epsilon=1, eta=1)
    ps = ProfileSet(variants={"v": VariantProfile(name="v", fit=fit)})
    ps.save(p)
    assert ProfileSet.load(p).get("v").fit == fit
    with pytest.raises(TidalError, match="no profile for variant 'w'"):
        ps.get("w")


def test_sim_clock_never_goes_back() -> None:
    c = SimClock(1.0)
    c.advance(0.5)
    assert c.now() == 1.5
    with pytest.raises(ValueError):
        c.advance_to(1.0)
