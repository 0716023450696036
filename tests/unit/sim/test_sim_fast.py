"""The fast mode (numba kernel) agrees with the reference mode (the dataplane's own objects)
request by request: same outcome and same end time (to the microsecond) for every request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tidal.core.errors import TidalError
from tidal.core.pipeline import PipelineSpec, StageSpec
from tidal.core.profile import LatencyFit, ProfileSet, VariantProfile
from tidal.sim.config import SimConfig, sim_scheduler
from tidal.sim.engine import simulate
from tidal.workload import synthetic_rates

FIT = LatencyFit(gamma=18.3, delta=4.49, epsilon=45.5, eta=1.05, p99_ratio=1.4)
PROFILES = ProfileSet(
    variants={"m": VariantProfile(name="m", accuracy=0.7, load_time_s=3, resize_s=0.2, fit=FIT)}
)
ONE = PipelineSpec(name="one", stages=[StageSpec(name="s", task="t", variants=["m"])])


def outcomes(path: Path) -> dict[int, tuple[str, str]]:
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    return {int(r[0]): (r[4], r[3]) for r in rows}


@pytest.mark.parametrize(
    ("policy", "kwargs", "admission", "slo", "hold"),
    [
        ("hpa", {}, True, 400.0, 0.0),
        ("static", {"replicas": 3, "cores": 2, "batch": 8}, False, 300.0, 0.0),
        ("static", {"replicas": 2, "cores": 2, "batch": 8}, True, 300.0, 0.1),
        ("rayserve", {}, True, 750.0, 0.0),
        ("sponge", {}, True, 500.0, 0.0),
    ],
)
def test_fast_agrees_with_reference_request_by_request(
    tmp_path: Path, policy: str, kwargs: dict[str, Any], admission: bool, slo: float, hold: float
) -> None:
    rates = np.concatenate(
        [synthetic_rates("spike", 120, 15, 150, seed=3), synthetic_rates("ramp", 60, 5, 80, 4)]
    )
    res = {}
    for mode in ("reference", "fast"):
        sched = sim_scheduler(admission=admission, hold_fraction=hold)
        cfg = SimConfig(slo_ms=slo, mode=mode, seed=7, scheduler=sched)
        r = simulate(
            ONE, PROFILES, rates, policy, cfg, tmp_path / f"{mode}.csv", policy_kwargs=kwargs
        )
        res[mode] = (r, outcomes(tmp_path / f"{mode}.csv"))
    (ref, a), (fast, b) = res["reference"], res["fast"]
    assert ref.mode == "reference" and fast.mode == "fast"
    assert len(a) == len(b) == int(rates.sum())
    diff = [k for k in a if a[k] != b[k]]
    assert diff == [], f"first differences: {[(k, a[k], b[k]) for k in diff[:3]]}"
    assert ref.counts == fast.counts and ref.core_seconds == fast.core_seconds
    assert ref.counts["ok"] < ref.requests or policy == "static"  # a scenario with pressure


def test_fast_mode_refuses_cases_it_does_not_cover() -> None:
    two = PipelineSpec(
        name="two",
        stages=[
            StageSpec(name="a", task="t", variants=["m"]),
            StageSpec(name="b", task="t", variants=["m"]),
        ],
    )
    with pytest.raises(TidalError, match="one-stage pipelines"):
        simulate(two, PROFILES, np.full(5, 1.0), "static", SimConfig(mode="fast"))
