"""Serving config validation: messages name the field and the value; examples load."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidal.config.serve import load_serve_config, parse_serve_config
from tidal.core.errors import TidalError

ROOT = Path(__file__).resolve().parents[3]


def test_examples_load() -> None:
    one = load_serve_config(ROOT / "examples/single-model.yaml")
    assert one.host == "127.0.0.1" and one.routes() == {"digits": ["digits"]}
    two = load_serve_config(ROOT / "examples/two-stage.yaml")
    assert two.routes() == {"digits-pipeline": ["preprocess", "classify"]}
    plan = two.initial_plan()
    assert [s.stage for s in plan.stages] == ["preprocess", "classify"]
    assert plan.stage("classify").total_replicas == 2


def test_defaults_fill_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDAL_TOKEN", "from-env-0123456789")
    cfg = parse_serve_config({"models": [{"name": "a", "variants": ["noop", "digits-mlp"]}]})
    sp = cfg.initial_plan().stage("a")
    assert (sp.variants[0].name, sp.replicas, sp.cores, sp.batch) == ("noop", 1, 1.0, 8)
    assert cfg.admin_token() == "from-env-0123456789"
    tok = "t" * 16
    assert parse_serve_config({**cfg.model_dump(), "token": tok}).admin_token() == tok


M = {"models": [{"name": "m", "variants": ["noop"]}]}


def _plan(stage: str, cores: float) -> dict[str, object]:
    sp = {"stage": stage, "variants": [{"name": "noop"}], "replicas": 1, "cores": cores, "batch": 1}
    return {**M, "plan": {"stages": [sp]}}


def _pipe(*stages: str) -> dict[str, object]:
    return {
        "pipelines": [{"name": "p", "stages": [{"name": s, "variants": ["noop"]} for s in stages]}]
    }


BAD = [
    ({}, "nothing to serve"),
    # unknown variants / mixed inputs: tidal.models.resolve (tests/unit/models/test_repository*.py)
    ({"models": [{"name": "m", "variants": []}]}, "models.0.variants"),
    ({**M, "port": 70000}, "port: Input should be less than or equal to 65535 (got 70000)"),
    ({**M, "default_slo_ms": -1}, "default_slo_ms"),
    ({**M, "colour": "red"}, "colour: Extra inputs are not permitted"),
    ({"models": M["models"] * 2}, "duplicate model/pipeline names ['m']"),
    (_pipe("s", "s"), "duplicate stage names ['s']"),
    (_plan("x", 1.0), "plan.stages[0].stage: unknown stage 'x'"),
    (_plan("m", 0.0), "plan.stages.0.cores"),
]


@pytest.mark.parametrize(("raw", "msg"), BAD)
def test_bad_configs_name_field_and_value(raw: dict[str, object], msg: str) -> None:
    with pytest.raises(TidalError) as e:
        parse_serve_config(raw, "cfg.yaml")
    assert msg in str(e.value)
    assert str(e.value).startswith("cfg.yaml: ")


def test_missing_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(TidalError, match="config file not found"):
        load_serve_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(TidalError, match="not valid YAML"):
        load_serve_config(bad)
    bad.write_text("- 1\n")
    with pytest.raises(TidalError, match="top level must be a mapping"):
        load_serve_config(bad)
