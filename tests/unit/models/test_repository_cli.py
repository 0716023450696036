"""The repository's CLI: `tidal models export` writes zoo variants in repository form, `tidal
models list --model-repository` shows zoo and repository versions with the problems, `tidal
plan --model-repository` plans a repository model on its (estimated) profiles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from repo_builders import tiny_model
from typer.testing import CliRunner

from tidal.cli.main import app

runner = CliRunner()


def test_export_then_list_both(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    r = runner.invoke(app, ["models", "export", str(repo), "digits-linear", "digits-cnn"])
    assert r.exit_code == 0, r.output
    assert (repo / "digits" / "1" / "model.onnx").is_file()  # digits-linear: rank 1
    assert (repo / "digits" / "3" / "model.onnx").is_file()  # digits-cnn: rank 3
    cfg = yaml.safe_load((repo / "digits" / "config.yaml").read_text())
    assert set(cfg["versions"]) == {1, 3} and cfg["task"] == "digits"
    assert "zoo variant digits-cnn" in cfg["versions"][3]["accuracy_source"]
    (repo / "broken" / "x").mkdir(parents=True)
    r = runner.invoke(app, ["models", "list", "--model-repository", str(repo), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    by = {v["name"]: v for v in out["variants"]}
    assert by["digits-cnn"]["source"] == "zoo" and by["digits/3"]["source"] == "repository"
    assert by["digits/3"]["accuracy"] == pytest.approx(by["digits-cnn"]["accuracy"])
    assert any("model folder without ONNX" in p for p in out["problems"])


def test_export_unknown_variant_names_it(tmp_path: Path) -> None:
    r = runner.invoke(app, ["models", "export", str(tmp_path), "resnet9"])
    assert r.exit_code != 0 and "unknown variant 'resnet9'" in str(r.exception)
    assert not any(tmp_path.iterdir())  # nothing written


def test_plan_on_a_repository_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDAL_CACHE", str(tmp_path / "cache"))
    tiny_model(tmp_path / "repo" / "m" / "1" / "model.onnx")
    (tmp_path / "repo" / "m" / "config.yaml").write_text("versions: {1: {accuracy: 0.9}}\n")
    args = ["plan", "--policy", "ipa", "--model-repository", str(tmp_path / "repo")]
    r = runner.invoke(app, [*args, "--rps", "5", "--slo-ms", "500", "--json"])
    assert r.exit_code == 0, r.output
    assert "conservative estimate: ['m/1']" in r.output  # never profiled here: said so
    decision = json.loads(r.output[r.output.index("{") :])
    assert decision["stages"][0]["variants"][0]["name"] == "m/1"
