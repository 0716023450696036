"""The profiler end to end on a tiny variant: one worker, resized in place, fitted, saved."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tidal.core.profile import ProfilePoint, ProfileSet
from tidal.profiling.profiler import Budget, Grid, VariantRun, profile_variants, to_profile

TINY = Budget(point_budget_s=0.05, min_samples=3, max_samples=5, warmup=1, cpu_weight=None)


def test_profile_variants_measures_every_point_in_one_resized_worker(tmp_path) -> None:
    seen: list[tuple[str, int, float]] = []
    out = tmp_path / "p.json"
    ps = profile_variants(
        ["digits-cnn"],
        Grid((1, 4), (0.5, 1.0)),
        TINY,
        progress=lambda v, b, c: seen.append((v, b, c)),
        save_to=out,
    )
    assert seen == [("digits-cnn", 1, 1.0), ("digits-cnn", 4, 1.0),
                    ("digits-cnn", 1, 0.5), ("digits-cnn", 4, 0.5)]  # fmt: skip
    v = ps.get("digits-cnn")
    assert {(p.batch, p.cores) for p in v.points} == {(1, 0.5), (4, 0.5), (1, 1.0), (4, 1.0)}
    assert all(3 <= p.samples <= 5 and p.p99_ms >= p.p50_ms > 0 for p in v.points)
    assert v.load_time_s > 0
    assert "trained here" in v.accuracy_source and v.accuracy > 0.9
    d = ps.machine["details"]["digits-cnn"]
    assert len(d["resize_apply_s"]) == 1  # started at 1 core, resized once to 0.5 in place
    assert ps.machine["cores"] == len(os.sched_getaffinity(0)) and "noisy" in ps.machine["note"]
    assert ProfileSet.load(out).get("digits-cnn").points == v.points
    # the range measured is recorded, and planners stay inside it (no extrapolation flag)
    assert v.cores_measured == (0.5, 1.0) and not v.extrapolate
    assert v.core_bounds() == (0.5, 1.0) and ps.machine["extrapolate"] is False


def test_extrapolation_is_recorded_only_when_asked() -> None:
    pts = [ProfilePoint(batch=b, cores=c, p50_ms=10.0 * b / c + 1, p99_ms=12.0 * b / c + 1)
           for b in (1, 4) for c in (0.5, 2.0)]  # fmt: skip
    run = VariantRun("digits-cnn", points=pts)
    assert to_profile(run).core_bounds() == (0.5, 2.0)
    opened = to_profile(run, extrapolate=True)
    assert opened.cores_measured == (0.5, 2.0) and opened.core_bounds() is None


def test_cli_quick_profile_writes_a_loadable_file(tmp_path) -> None:
    out = tmp_path / "q.json"
    r = subprocess.run(
        [sys.executable, "-m", "tidal.cli.main", "profile", "noop", "--quick",
         "--point-budget-s", "0.05", "-o", str(out)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    ps = ProfileSet.load(out)
    assert len(ps.get("noop").points) == 4 and "R^2" in r.stdout
    assert json.loads(out.read_text())["format_version"] == 1
    assert ps.get("noop").cores_measured == (0.5, 1.0)
    assert "0.5-1 (planners stay inside)" in r.stdout
