"""The model repository: layout, config.yaml / config.pbtxt, graph-derived tensors, and every
bad input of issue 12 named by file/field/value while the rest of the repository serves."""

from __future__ import annotations

from pathlib import Path

import pytest
from repo_builders import tiny_model, two_input_model

from tidal.config.serve import parse_serve_config
from tidal.core.errors import TidalError
from tidal.models.catalog import get_variant, unregister_variant
from tidal.models.onnx_cache import onnx_path
from tidal.models.pbtxt import parse_pbtxt
from tidal.models.repository import scan_model, scan_repository
from tidal.models.resolve import resolve_serve_config


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    tiny_model(r / "good" / "1" / "model.onnx", n_out=3)
    tiny_model(r / "good" / "2" / "model.onnx", n_out=3, scale=3.0)
    (r / "good" / "config.yaml").write_text(
        "task: tabular\nmax_batch_size: 32\n"
        "versions:\n  2: {accuracy: 0.9, accuracy_source: test}\n"
    )
    return r


def test_layout_without_config_reads_the_graph(tmp_path: Path) -> None:
    tiny_model(tmp_path / "m" / "10" / "model.onnx")
    tiny_model(tmp_path / "m" / "2" / "model.onnx")
    m = scan_model(tmp_path, "m")
    assert [v.version for v in m.versions] == [2, 10]  # by number, not by string
    assert m.inputs[0].to_json() == {"name": "X", "datatype": "FP32", "shape": [-1, 4]}
    assert m.outputs[0].to_json() == {"name": "Y", "datatype": "FP32", "shape": [-1, 3]}
    assert m.config_source == "graph only"
    assert all(v.accuracy is None and "unknown" in v.accuracy_source for v in m.versions)
    assert m.version_variants() == {"2": "m/2", "10": "m/10"}


def test_versions_become_catalog_variants(repo: Path) -> None:
    r = scan_repository(repo)
    assert not r.problems
    r.register()
    try:
        spec = get_variant("good/2")
        assert (spec.model, spec.version, spec.task, spec.accuracy) == ("good", "2", "tabular", 0.9)
        assert spec.max_batch_size == 32 and spec.input_shape == (4,)
        assert onnx_path("good/2") == (repo / "good" / "2" / "model.onnx").resolve()
        assert get_variant("good/1").accuracy == 0.0  # unknown: not given
    finally:
        for v in ("good/1", "good/2"):
            unregister_variant(v)
    with pytest.raises(TidalError, match="unknown variant 'good/1'"):
        get_variant("good/1")


def test_multi_input_graph_and_pbtxt_dims(tmp_path: Path) -> None:
    two_input_model(tmp_path / "txt" / "1" / "model.onnx", seq="seq")
    (tmp_path / "txt" / "config.pbtxt").write_text(
        'name: "txt"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 16\n'
        'input [\n  { name: "ids" data_type: TYPE_INT64 dims: [ 8 ] },\n'
        '  { name: "mask" data_type: TYPE_INT64 dims: [ 8 ] }\n]\n'
        'output [ { name: "out" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        "instance_group [ { count: 1 kind: KIND_CPU } ]  # ignored\n"
    )
    m = scan_model(tmp_path, "txt")
    assert [t.to_json() for t in m.inputs] == [
        {"name": "ids", "datatype": "INT64", "shape": [-1, 8]},
        {"name": "mask", "datatype": "INT64", "shape": [-1, 8]},
    ]
    assert m.max_batch_size == 16 and m.config_source == "config.pbtxt + graph"


def test_pbtxt_syntax_error_names_file_and_line() -> None:
    with pytest.raises(TidalError, match=r"cfg.pbtxt: expected '\}', got end of file"):
        parse_pbtxt('name: "a"\ninput [ { name: "x" ', "cfg.pbtxt")
    with pytest.raises(TidalError, match=r"c.pbtxt: line 2: expected a field name, got '\]'"):
        parse_pbtxt('name: "a"\n ] ', "c.pbtxt")
    with pytest.raises(TidalError, match="data_type 'TYPE_NOPE' unknown"):
        parse_pbtxt('input [ { name: "x" data_type: TYPE_NOPE dims: [1] } ]', "c")


def _bad(root: Path, case: str) -> str:
    """Build one bad model folder `root/bad`; return the substring its problem must contain."""
    d = root / "bad"
    if case == "no onnx":
        (d / "1").mkdir(parents=True)
        (d / "1" / "weights.bin").write_bytes(b"x")
        return "model folder without ONNX"
    if case == "onnx fails to load":
        (d / "1").mkdir(parents=True)
        (d / "1" / "model.onnx").write_bytes(b"this is not protobuf \xff\xfe")
        return f"{d / '1' / 'model.onnx'}: the ONNX file fails to load"
    if case == "config contradicts graph":
        tiny_model(d / "1" / "model.onnx")
        (d / "config.yaml").write_text("inputs: [{name: X, datatype: FP64, dims: [4]}]\n")
        return "config.yaml: input 'X' datatype FP64 contradicts the graph"
    if case == "config dims contradict graph":
        tiny_model(d / "1" / "model.onnx")
        (d / "config.pbtxt").write_text('input [ { name: "X" data_type: TYPE_FP32 dims: [ 5 ] } ]')
        return "config.pbtxt: input 'X' dims [5] (batch dim excluded) contradict the graph"
    if case == "config names unknown input":
        tiny_model(d / "1" / "model.onnx")
        (d / "config.yaml").write_text("inputs: [{name: input_ids}]\n")
        return "lists inputs ['input_ids'] but the graph"
    if case == "version not a number":
        tiny_model(d / "v1" / "model.onnx")
        return "version folder 'v1' is not a positive number"
    if case == "bad config field":
        tiny_model(d / "1" / "model.onnx")
        (d / "config.yaml").write_text("max_batch_size: 0\n")
        return "config.yaml: max_batch_size"
    if case == "duplicate names":
        tiny_model(d / "1" / "model.onnx")
        (d / "config.yaml").write_text("name: good\n")
        return "duplicate model name 'good'"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "no onnx",
        "onnx fails to load",
        "config contradicts graph",
        "config dims contradict graph",
        "config names unknown input",
        "version not a number",
        "bad config field",
    ],
)
def test_bad_input_is_named_and_the_rest_serves(repo: Path, case: str) -> None:
    want = _bad(repo, case)
    r = scan_repository(repo)
    assert "good" in r.models, r.problems  # the rest keeps serving
    assert "bad" not in r.models
    msgs = [p.message for p in r.problems]
    assert any(want in m for m in msgs), msgs


def test_version_folder_not_a_number_keeps_other_versions(repo: Path) -> None:
    tiny_model(repo / "good" / "latest" / "model.onnx")
    r = scan_repository(repo)
    assert [v.version for v in r.models["good"].versions] == [1, 2]
    assert any("'latest' is not a positive number" in p.message for p in r.problems)


def test_duplicate_model_names_serve_neither(repo: Path) -> None:
    want = _bad(repo, "duplicate names")
    tiny_model(repo / "other" / "1" / "model.onnx")
    r = scan_repository(repo)
    assert "good" not in r.models and "other" in r.models
    assert any(want in p.message and "neither is served" in p.message for p in r.problems)


def test_dynamic_non_batch_dim_needs_config_dims(tmp_path: Path) -> None:
    two_input_model(tmp_path / "t" / "1" / "model.onnx", seq="seq")
    with pytest.raises(TidalError, match=r"dynamic non-batch dimension: give its size"):
        scan_model(tmp_path, "t")


def test_versions_with_different_inputs_are_refused(tmp_path: Path) -> None:
    tiny_model(tmp_path / "m" / "1" / "model.onnx", n_in=4)
    tiny_model(tmp_path / "m" / "2" / "model.onnx", n_in=5)
    with pytest.raises(TidalError, match="differ from version 1's"):
        scan_model(tmp_path, "m")


def test_resolve_serves_repository_without_yaml_models(repo: Path) -> None:
    tiny_model(repo / "b" / "1" / "model.onnx")
    (repo / "b" / "config.yaml").write_text("pipeline: {name: chain, position: 1}\n")
    (repo / "good" / "config.yaml").write_text("pipeline: {name: chain, position: 0}\n")
    cfg = parse_serve_config({"model_repository": str(repo)})
    out, r = resolve_serve_config(cfg)
    assert r is not None and not r.problems
    assert out.routes() == {"b": ["b"], "good": ["good"], "chain": ["chain.good", "chain.b"]}
    assert dict(out.stages())["good"] == ["good/1", "good/2"]


def test_yaml_pipelines_refer_to_repository_models(repo: Path) -> None:
    cfg = parse_serve_config(
        {
            "model_repository": str(repo),
            "pipelines": [{"name": "p", "stages": [{"name": "s0", "variants": ["good"]}]}],
            "plan": {"stages": [{"stage": "s0", "variants": [{"name": "good/2"}], "replicas": 1,
                                 "cores": 1.0, "batch": 4}]},
        }
    )  # fmt: skip
    out, _ = resolve_serve_config(cfg)
    assert dict(out.stages())["s0"] == ["good/1", "good/2"]
    assert out.initial_plan().stage("s0").variants[0].name == "good/2"


@pytest.mark.parametrize(
    ("raw", "msg"),
    [
        ({"models": [{"name": "m", "variants": ["resnet9"]}]}, "models[0].variants: unknown"),
        ({"models": [{"name": "m", "variants": ["noop", "resnet18"]}]}, "take different inputs"),
        (
            {"model_repository": "REPO", "plan": {"stages": [{"stage": "x", "variants": [
                {"name": "noop"}], "replicas": 1, "cores": 1.0, "batch": 1}]}},
            "plan.stages[0].stage: unknown stage 'x'",
        ),
    ],
)  # fmt: skip
def test_resolve_names_the_field(repo: Path, raw: dict[str, object], msg: str) -> None:
    if raw.get("model_repository") == "REPO":
        raw = {**raw, "model_repository": str(repo)}
    with pytest.raises(TidalError) as e:
        resolve_serve_config(parse_serve_config(raw))
    assert msg in str(e.value)


def test_repository_model_clashing_with_yaml_model(repo: Path) -> None:
    cfg = parse_serve_config(
        {"model_repository": str(repo), "models": [{"name": "good", "variants": ["noop"]}]}
    )
    out, r = resolve_serve_config(cfg)
    assert r is not None and any("duplicate model name 'good'" in p.message for p in r.problems)
    assert out.routes() == {"good": ["good"]} and dict(out.stages())["good"] == ["noop"]


def test_missing_repository_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TidalError, match="not a directory"):
        scan_repository(tmp_path / "nope")
