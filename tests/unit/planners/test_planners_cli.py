"""`tidal plan` / `tidal bench planners`: JSON shape, bad input named with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tidal.bench.planners import bench
from tidal.core.errors import TidalError
from tidal.core.profile import ProfileSet
from tidal.planners import Capacity
from tidal.planners.oneshot import decide
from tidal.planners.synthetic import synthetic_variant

ROOT = Path(__file__).resolve().parents[3]
PIPES = ROOT / "examples" / "pipelines"


def tidal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidal.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plan_json_shape_via_cli() -> None:
    r = tidal(
        "plan", "--policy", "themis", "--pipeline", str(PIPES / "two-stage.yaml"),
        "--rps", "20", "--slo-ms", "800", "--profile", "synthetic", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) >= {"policy", "feasible", "stages", "predicted", "decision_ms"}
    assert out["policy"] == "themis" and out["feasible"] is True
    assert [s["stage"] for s in out["stages"]] == ["classify", "nlp"]
    for s in out["stages"]:
        assert set(s) >= {"stage", "variants", "replicas", "cores", "batch"}
        assert s["variants"][0].keys() >= {"name", "weight"}
    assert set(out["predicted"]) == {"latency_ms", "cores", "accuracy"}
    assert out["predicted"]["latency_ms"] <= 800


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "nope"], "unknown policy 'nope'; valid policies: fa2"),
        (["--rps", "-1"], "rate must be >= 0 req/s, got -1.0"),
        (["--slo-ms", "-5"], "SLO must be > 0 ms, got -5.0"),
        (["--policy", "hpa", "--option", "cores=-1"], "hpa: invalid option cores: Input should"),
        (["--policy", "hpa", "--option", "bogus=1"], "hpa: unknown option 'bogus'; valid"),
        (["--policy", "hpa", "--option", "batch=0"], "hpa: invalid option batch"),
    ],
)
def test_bad_input_exit_2_naming_it(args: list[str], message: str) -> None:
    base = {"--policy": "ipa", "--rps": "10", "--slo-ms": "500"}
    it = iter(args)
    base.update(dict(zip(it, it, strict=True)))
    flat = [x for kv in base.items() for x in kv]
    r = tidal("plan", *flat, "--pipeline", str(PIPES / "one-stage.yaml"), "--profile", "synthetic")
    assert r.returncode == 2
    assert message in " ".join(r.stderr.split())
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # one line, no traceback


def test_unknown_stage_and_variant_are_named() -> None:
    with pytest.raises(TidalError, match="unknown stage 'foo'"):
        decide("static", PIPES / "two-stage.yaml", 1, 500, "synthetic", variants={"foo": "x"})
    with pytest.raises(TidalError, match="unknown variant 'resnet152' for stage 'classify'"):
        decide(
            "static", PIPES / "two-stage.yaml", 1, 500, "synthetic",
            variants={"classify": "resnet152"},
        )  # fmt: skip


def test_profile_missing_a_variant_is_named(tmp_path: Path) -> None:
    ps = ProfileSet(variants={"resnet18": synthetic_variant("resnet18", 0)})
    f = tmp_path / "p.json"
    ps.save(f)
    with pytest.raises(TidalError, match="no profile for variant 'resnet34'"):
        decide("ipa", PIPES / "one-stage.yaml", 10, 500, str(f))


def test_infadapter_measured_capacity_missing_is_named(tmp_path: Path) -> None:
    with pytest.raises(TidalError, match="variant 'resnet18': profile needs >= 2 capacity"):
        decide(
            "infadapter", PIPES / "one-stage.yaml", 10, 750, "synthetic",
            capacity=Capacity(1, 16), options={"capacity": "measured"},
        )  # fmt: skip


@pytest.mark.parametrize("pipe", ["one-stage", "two-stage", "three-stage"])
def test_zero_load_minimum_plan_on_shipped_pipelines(pipe: str) -> None:
    out = decide("ipa", PIPES / f"{pipe}.yaml", 0, 1000, "synthetic", capacity=Capacity(1, 4))
    assert out["feasible"]
    assert all(s["replicas"] == 1 and s["batch"] == 1 for s in out["stages"])


def test_bench_reports_every_policy_and_length() -> None:
    res = bench(stages=(1, 3), repeat=1, policies=["themis", "hpa"])
    assert set(res["median_ms"]) == {"themis", "hpa"}
    assert set(res["median_ms"]["themis"]) == {"1", "3"}
    assert res["feasible"]["themis"]["3"] is True
    assert set(res["p95_ms"]["themis"]) == {"1", "3"} and len(res["load_average_start"]) == 3
