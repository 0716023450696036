"""Model zoo: catalog, errors, ONNX export and cache, the digits family's real accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tidal.core.errors import TidalError
from tidal.models.catalog import (
    LABEL_PUBLISHED,
    LABEL_TRAINED,
    get_variant,
    list_variants,
)

IMAGE = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
TEXT = ["bert-tiny", "bert-mini", "bert-small", "bert-medium", "bert-base"]
DIGITS = ["digits-linear", "digits-mlp", "digits-cnn"]


def test_catalog_has_the_fixed_names_and_families() -> None:
    names = [v.name for v in list_variants()]
    assert names == IMAGE + TEXT + DIGITS + ["noop"]
    assert {get_variant(n).task for n in IMAGE} == {"image-classification"}
    assert {get_variant(n).task for n in TEXT} == {"text-classification"}
    assert {get_variant(n).task for n in DIGITS} == {"digits"}
    assert [get_variant(n).accuracy for n in IMAGE] == [0.6976, 0.7331, 0.7613, 0.7737, 0.7831]
    for n in IMAGE + TEXT:
        v = get_variant(n)
        assert v.label == LABEL_PUBLISHED and v.accuracy_source
    for n in DIGITS:
        assert get_variant(n).label == LABEL_TRAINED
        assert "measured here" in get_variant(n).accuracy_source


def test_input_specs() -> None:
    assert get_variant("resnet50").input_shape == (3, 224, 224)
    assert get_variant("bert-tiny").input_dtype == np.dtype("int64")
    assert get_variant("bert-tiny").input_shape[0] <= 128
    assert get_variant("digits-cnn").input_shape == (64,)
    x = get_variant("bert-mini").input.sample(3)
    assert x.shape == (3, get_variant("bert-mini").input_shape[0]) and x.min() >= 1


def test_load_time_comes_from_the_reference_profile() -> None:
    from tidal.profiling import load_reference

    ref = load_reference()
    for name in ("resnet18", "resnet50", "digits-cnn"):
        assert get_variant(name).load_time_s == ref.get(name).load_time_s > 0


def test_unknown_variant_lists_valid_names() -> None:
    with pytest.raises(TidalError, match=r"unknown variant 'resnet9'.*resnet18.*digits-cnn"):
        get_variant("resnet9")


@pytest.mark.parametrize("name", ["digits-linear", "digits-mlp", "digits-cnn", "bert-tiny"])
def test_param_counts_match_the_built_models(name: str) -> None:
    model = get_variant(name).build()
    assert sum(p.numel() for p in model.parameters()) == get_variant(name).params


def test_resnet18_param_count_matches_published_architecture() -> None:
    # 11,689,512 is torchvision's ResNet-18: the plain-torch architecture is the same network.
    model = get_variant("resnet18").build()
    assert sum(p.numel() for p in model.parameters()) == 11_689_512


def test_digits_accuracy_is_reproduced_from_committed_weights() -> None:
    from tidal.models.digits import METRICS_FILE, accuracy, build_digits, load_split

    metrics = json.loads(METRICS_FILE.read_text())
    _, xte, _, yte = load_split()
    for name in DIGITS:
        acc = accuracy(build_digits(name), xte, yte)
        assert acc == pytest.approx(metrics[name]["test_accuracy"], abs=1e-9)
        assert get_variant(name).accuracy == pytest.approx(acc)
        assert acc > 0.9  # real predictions, far above the 10% of chance


def test_onnx_export_is_cached_and_matches_torch(tmp_path, monkeypatch) -> None:
    import onnxruntime as ort
    import torch

    from tidal.models.onnx_cache import content_hash, onnx_path

    monkeypatch.setenv("TIDAL_CACHE", str(tmp_path))
    p = onnx_path("digits-cnn")
    assert p.parent == tmp_path / "onnx" and content_hash("digits-cnn") in p.name
    mtime = p.stat().st_mtime_ns
    assert onnx_path("digits-cnn") == p and p.stat().st_mtime_ns == mtime  # not re-exported
    x = get_variant("digits-cnn").input.sample(5)
    sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    y_ort = sess.run(None, {"input": x})[0]  # batch 5 != export batch 2: dynamic axis works
    with torch.no_grad():
        y_torch = get_variant("digits-cnn").build()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y_ort, y_torch, rtol=1e-4, atol=1e-5)
    assert content_hash("digits-cnn") != content_hash("digits-mlp")
