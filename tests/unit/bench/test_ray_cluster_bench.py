"""`tidal bench ray-cluster`'s pure parts: an earlier result is only combined with the same
setup, and the report prints every run with its load average and the differences."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tidal.bench.ray_cluster import bench_ray_cluster, format_report
from tidal.core.errors import TidalError


def _summary(rate: float) -> dict[str, Any]:
    return {
        "policy": "themis",
        "requests": 100,
        "slo_violation_rate": rate,
        "violations": {"late": 1, "refused": int(rate * 100) - 1, "expired": 0, "error": 0},
        "p99_ms": 300.0,
        "core_seconds": 150.0,
        "loadgen_kept_up": True,
        "loadavg_start": (4.0, 4.0, 4.0),
        "loadavg_end": (5.0, 5.0, 5.0),
    }


def test_an_earlier_result_of_another_setup_is_refused_naming_the_field() -> None:
    earlier = {"policy": "themis", "slowdown": 1.0, "slo_ms": 1.0, "runs": {}}
    with pytest.raises(TidalError, match="slo_ms"):
        bench_ray_cluster(only=["ray"], against=earlier, slo_ms=350.0)


def test_unknown_runs_are_refused() -> None:
    with pytest.raises(TidalError, match="valid: local, local-nodes, ray"):
        bench_ray_cluster(only=["cluster"])


def test_report_has_every_run_and_the_differences() -> None:
    r = {
        "trace": "t",
        "policy": "themis",
        "slo_ms": 350.0,
        "slowdown": 1.0,
        "requests": 100,
        "cores": 1.5,
        "nodes": 3,
        "cores_per_node": 0.5,
        "runs": {"local": {**_summary(0.02), "earlier": True}, "ray": _summary(0.05)},
        "pp": {"ray - local": 3.0},
        "loadavg_start": (4.0, 4.0, 4.0),
        "loadavg_end": (5.0, 5.0, 5.0),
    }
    text = format_report(r)
    assert "local" in text and "2.00%" in text and "[earlier invocation]" in text
    assert "5.00%" in text and "ray - local: +3.00 pp" in text and "4.0 / 5.0" in text


def test_stage_slowdowns_read_the_decision_log(tmp_path: Any) -> None:
    from tidal.bench.ray_cluster import stage_slowdowns

    log = tmp_path / "decisions-themis.jsonl"
    rows: list[dict[str, Any]] = [{"inputs": {"slowdown": {}}}] + [
        {"inputs": {"slowdown": {"nlp": float(k), "classify": 2.0}}} for k in range(1, 12)
    ]
    log.write_text("\n".join(json.dumps(r) for r in rows))
    got = stage_slowdowns(log)
    assert got["nlp"]["median"] == pytest.approx(6.0)
    assert got["nlp"]["p90"] == pytest.approx(10.0)
    assert got["classify"] == {"median": 2.0, "p90": 2.0, "decisions": 11.0}
    assert stage_slowdowns(tmp_path / "missing.jsonl") == {}
    r = {
        "trace": "t", "policy": "themis", "slo_ms": 350.0, "slowdown": 1.0, "requests": 100,
        "cores": 1.5, "nodes": 3, "cores_per_node": 0.5, "pp": {},
        "runs": {"ray": {**_summary(0.05), "stage_slowdown": got}},
        "loadavg_start": (4.0, 4.0, 4.0), "loadavg_end": (5.0, 5.0, 5.0),
    }  # fmt: skip
    assert "nlp x6.00 (p90 x10.00)" in format_report(r)
