"""Sponge fit, importers of the published profiles, the reference profile, grid validation."""

from __future__ import annotations

import json

import pytest

from tidal.core.errors import TidalError
from tidal.core.profile import LatencyFit, ProfilePoint, ProfileSet
from tidal.profiling import load_imported, load_reference
from tidal.profiling.fit import fit_sponge
from tidal.profiling.importers import import_infadapter, import_sponge
from tidal.profiling.profiler import Grid


def _grid_points(fit: LatencyFit) -> list[ProfilePoint]:
    return [
        ProfilePoint(batch=b, cores=c, p50_ms=fit.latency_ms(b, c), p99_ms=fit.latency_ms(b, c))
        for b in (1, 2, 4, 8, 16)
        for c in (0.5, 1.0, 1.5, 2.0)
    ]


def test_fit_recovers_known_coefficients() -> None:
    truth = LatencyFit(gamma=30.0, delta=2.0, epsilon=5.0, eta=1.5)
    fit = fit_sponge(_grid_points(truth))
    assert fit.gamma == pytest.approx(30.0, rel=1e-4)
    assert fit.delta == pytest.approx(2.0, rel=1e-3)
    assert fit.epsilon == pytest.approx(5.0, rel=1e-3)
    assert fit.eta == pytest.approx(1.5, rel=1e-2)
    assert fit.r2 == pytest.approx(1.0) and fit.max_rel_residual < 1e-4


def test_fit_reports_bad_quality_honestly() -> None:
    pts = _grid_points(LatencyFit(gamma=30.0, delta=2.0, epsilon=5.0, eta=1.5))
    pts[0] = pts[0].model_copy(update={"p50_ms": pts[0].p50_ms * 3})  # one outlier
    fit = fit_sponge(pts)
    assert fit.r2 < 1.0 and fit.max_rel_residual > 0.3


def test_fit_needs_two_batches_and_two_core_counts() -> None:
    pts = [ProfilePoint(batch=1, cores=c, p50_ms=10 / c, p99_ms=10 / c) for c in (1, 2, 3, 4)]
    with pytest.raises(TidalError, match="2 distinct batches"):
        fit_sponge(pts)


@pytest.mark.shared
def test_sponge_import_matches_reference_md() -> None:
    ps = load_imported("sponge")
    f = ps.get("sponge-yolov5").fit
    # REFERENCE.md: gamma=18.3, delta=4.49, epsilon=45.5, eta=1.05 ms, R^2=0.97.
    assert f.gamma == pytest.approx(18.3, abs=0.2)
    assert f.delta == pytest.approx(4.49, abs=0.1)
    assert f.epsilon == pytest.approx(45.5, abs=0.5)
    assert f.eta == pytest.approx(1.05, abs=0.6)
    assert f.r2 == pytest.approx(0.97, abs=0.01)
    assert max(p.cores for p in ps.get("sponge-yolov5").points) == 32


@pytest.mark.shared
def test_infadapter_import_capacities_load_times_and_fit() -> None:
    ps = load_imported("infadapter")
    assert sorted(ps.variants) == ["resnet101", "resnet152", "resnet18", "resnet34", "resnet50"]
    assert [ps.get(f"resnet{d}").load_time_s for d in (18, 34, 50, 101, 152)] == [
        6.44, 6.79, 6.82, 7.77, 8.52,
    ]  # fmt: skip
    r18 = ps.get("resnet18")
    assert r18.accuracy == 0.6976 and len(r18.capacity) == 20
    assert all(cp.sla_ms == 750 for cp in r18.capacity)
    cap = {cp.cores: cp.rps for cp in r18.capacity}
    assert cap[1] == 19 and cap[20] == 473  # rows of the CSV at SLA 750
    a = ps.machine["capacity_fit"]["resnet18"]["a"]
    assert 20 < a < 30  # about 24 rps per core
    # The latency fit is consistent with the capacities: 1000/l(1,c) ~ measured capacity.
    for c in (4.0, 8.0, 16.0):
        assert r18.throughput(1, c) == pytest.approx(cap[c], rel=0.2)


def test_importers_reject_missing_and_corrupt_files(tmp_path) -> None:
    with pytest.raises(TidalError, match="not found"):
        import_sponge(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("batch,cores,latency_s\n1,1,abc\n")
    with pytest.raises(TidalError, match=r"row 2: column latency_s = 'abc'"):
        import_sponge(bad)
    bad.write_text("x,y\n1,2\n")
    with pytest.raises(TidalError, match="lacks columns"):
        import_infadapter(bad)


def test_corrupt_profile_file_is_a_tidal_error(tmp_path) -> None:
    p = tmp_path / "p.json"
    p.write_text("{not json")
    with pytest.raises(TidalError, match="corrupt profile file"):
        ProfileSet.load(p)
    p.write_text(json.dumps({"format_version": 1, "variants": {"x": {"name": "x"}}}))
    with pytest.raises(TidalError, match="variants.x.fit"):
        ProfileSet.load(p)


def test_reference_profile_is_committed_and_fits_well() -> None:
    ref = load_reference()
    assert ref.source == "measured" and "noisy" in ref.machine["note"]
    for name in ("resnet18", "resnet34", "resnet50"):
        v = ref.get(name)
        assert v.fit.r2 >= 0.9, (name, v.fit.r2)
        assert v.load_time_s > 0 and len(v.points) >= 12
        # More cores never make the fitted latency worse; bigger batches never make it better.
        assert v.latency_ms(8, 2.0) <= v.latency_ms(8, 0.5)
        assert v.latency_ms(16, 1.0) >= v.latency_ms(1, 1.0)
    assert ref.get("resnet50").latency_ms(1, 1) > ref.get("resnet18").latency_ms(1, 1)


@pytest.mark.parametrize(
    ("batches", "cores", "match"),
    [
        ((0, 1), (1.0,), "batch size 0"),
        ((1,), (64.0,), "cores 64.0"),
        ((1,), (0.0,), "cores 0.0"),
        ((), (1.0,), "at least one"),
    ],
)
def test_impossible_grids_are_rejected(batches, cores, match) -> None:
    with pytest.raises(TidalError, match=match):
        Grid(batches, cores)
