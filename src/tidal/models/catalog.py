"""The model catalog: every servable variant with its task, accuracy (and source) and input spec.

Contract: `get_variant(name)` returns the VariantSpec or raises TidalError listing the valid
names; `list_variants()` returns all variants, grouped by family, smallest first. Builders import
torch lazily, so looking up the catalog (worker, planners, CLI) stays cheap.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tidal.core.errors import TidalError
from tidal.core.tensors import TensorMeta
from tidal.models.digits_data import DIGITS_VARIANTS

if TYPE_CHECKING:
    from torch import nn

LABEL_PUBLISHED = "latency-faithful, published accuracy"
LABEL_TRAINED = "trained here"
TEXT_SEQ_LEN = 64  # tokens per text input (BERT); <= 128 keeps the text family affordable here


@dataclass(frozen=True)
class InputSpec:
    """Shape of one input sample (without the batch dimension) and its dtype."""

    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float32" | "int64" (zoo); any numeric dtype (repository)
    int_high: int = 30522  # integer samples are drawn in [int_low, int_high)
    int_low: int = 1

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def sample(self, batch: int, seed: int = 0) -> np.ndarray:
        """A deterministic random batch of valid inputs (token ids in [1, 30521] for the zoo's
        int64; repository models sample integers in {0, 1}, valid for any embedding/mask)."""
        rng = np.random.default_rng(seed)
        size = (batch, *self.shape)
        dt = self.np_dtype
        if dt == np.bool_:
            return rng.integers(0, 2, size=size).astype(np.bool_)
        if dt.kind in "iu":
            return rng.integers(self.int_low, self.int_high, size=size).astype(dt)
        if dt == np.float32:
            return rng.random(size, dtype=np.float32)
        return rng.random(size).astype(dt)


@dataclass(frozen=True)
class VariantSpec:
    """One variant of the zoo. `accuracy` is a fraction in [0, 1]; `params` its parameter count."""

    name: str
    task: str
    family: str
    accuracy: float
    accuracy_source: str
    params: int
    input: InputSpec
    label: str
    builder: Callable[[], nn.Module] | None
    num_outputs: int
    # Repository versions (tidal.models.repository) only: the user's ONNX file (served as
    # is, never exported), every named input/output read from its graph, the model name and
    # version, the configured max batch size and the cold start given in its config.
    onnx_file: Path | None = None
    inputs: tuple[TensorMeta, ...] = ()
    outputs: tuple[TensorMeta, ...] = ()
    model: str | None = None
    version: str | None = None
    max_batch_size: int | None = None
    config_load_time_s: float | None = None

    def build(self) -> nn.Module:
        """The torch module of a zoo variant; TidalError for a repository version (it has
        only its ONNX file)."""
        if self.builder is None:
            raise TidalError(f"variant {self.name!r} has no builder: it is served from "
                             f"{self.onnx_file}")  # fmt: skip
        return self.builder()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.input.shape

    @property
    def input_dtype(self) -> np.dtype:
        return self.input.np_dtype

    @property
    def load_time_s(self) -> float | None:
        """Cold start (spawn + load + warm-up) measured at profiling on this machine: the
        committed reference profile's value (zoo), the config's (repository), or None."""
        if self.onnx_file is not None:
            return self.config_load_time_s
        return _reference_load_times().get(self.name)


_RESNET_ACC = {18: 0.6976, 34: 0.7331, 50: 0.7613, 101: 0.7737, 152: 0.7831}
_RESNET_PARAMS = {18: 11689512, 34: 21797672, 50: 25557032, 101: 44549160, 152: 60192808}
_RESNET_SRC = (
    "ImageNet top-1 (torchvision reference weights, as in InfAdapter/REFERENCE.md); "
    "weights here are random"
)
# SST-2 test accuracy: Turc et al. 2019, "Well-Read Students Learn Better" (arXiv 1908.08962),
# GLUE test table of google-research/bert; BERT-Base from Devlin et al. 2019 (GLUE test).
_BERT = {
    "bert-tiny": (0.832, 4386178, "SST-2 (GLUE test), Turc et al. 2019, arXiv 1908.08962"),
    "bert-mini": (0.859, 11171074, "SST-2 (GLUE test), Turc et al. 2019, arXiv 1908.08962"),
    "bert-small": (0.897, 28764674, "SST-2 (GLUE test), Turc et al. 2019, arXiv 1908.08962"),
    "bert-medium": (0.896, 41374210, "SST-2 (GLUE test), Turc et al. 2019, arXiv 1908.08962"),
    "bert-base": (0.935, 109483778, "SST-2 (GLUE test), Devlin et al. 2019, arXiv 1810.04805"),
}
_DIGITS_PARAMS = {"digits-linear": 650, "digits-mlp": 26122, "digits-cnn": 151306}


def _resnet_builder(depth: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from tidal.models.resnet import build_resnet

        return build_resnet(depth)

    return build


def _bert_builder(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from tidal.models.bert import build_bert

        return build_bert(name)

    return build


def _digits_builder(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from tidal.models.digits import build_digits

        return build_digits(name)

    return build


def _noop_builder() -> nn.Module:
    from tidal.models.noop import build_noop

    return build_noop()


_DIGITS_METRICS = Path(__file__).with_name("weights") / "digits_metrics.json"


def measured_accuracy(name: str) -> float | None:
    """Held-out accuracy measured when the committed digits weights were trained, or None."""
    if not _DIGITS_METRICS.is_file():
        return None
    acc = json.loads(_DIGITS_METRICS.read_text()).get(name, {}).get("test_accuracy")
    return float(acc) if acc is not None else None


def _build_catalog() -> dict[str, VariantSpec]:
    cat: dict[str, VariantSpec] = {}
    img = InputSpec((3, 224, 224), "float32")
    for depth, acc in _RESNET_ACC.items():
        name = f"resnet{depth}"
        cat[name] = VariantSpec(
            name, "image-classification", "resnet", acc, _RESNET_SRC, _RESNET_PARAMS[depth],
            img, LABEL_PUBLISHED, _resnet_builder(depth), 1000,
        )  # fmt: skip
    txt = InputSpec((TEXT_SEQ_LEN,), "int64")
    for name, (acc, params, src) in _BERT.items():
        cat[name] = VariantSpec(
            name, "text-classification", "bert", acc, src + "; weights here are random",
            params, txt, LABEL_PUBLISHED, _bert_builder(name), 2,
        )  # fmt: skip
    vec = InputSpec((64,), "float32")
    for name in DIGITS_VARIANTS:
        measured = measured_accuracy(name)
        cat[name] = VariantSpec(
            name, "digits", "digits", measured if measured is not None else 0.0,
            "measured here: held-out 25% of scikit-learn digits (450 images), "
            "`python -m tidal.models.digits`" if measured is not None
            else "weights not trained yet",
            _DIGITS_PARAMS[name], vec, LABEL_TRAINED, _digits_builder(name), 10,
        )  # fmt: skip
    cat["noop"] = VariantSpec(
        "noop", "noop", "noop", 1.0, "identity (data-plane overhead benchmark)", 0, vec,
        "identity", _noop_builder, 64,
    )  # fmt: skip
    return cat


_CATALOG: dict[str, VariantSpec] | None = None
_REFERENCE = Path(__file__).resolve().parent.parent / "profiles" / "reference.json"
_LOAD_TIMES: dict[str, float] | None = None


def _reference_load_times() -> dict[str, float]:
    """Variant -> load_time_s from the reference profile (plain JSON: no profiling import)."""
    global _LOAD_TIMES
    if _LOAD_TIMES is None:
        try:
            raw = json.loads(_REFERENCE.read_text())
            _LOAD_TIMES = {n: float(v["load_time_s"]) for n, v in raw.get("variants", {}).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            _LOAD_TIMES = {}
    return _LOAD_TIMES


def _catalog() -> dict[str, VariantSpec]:
    global _CATALOG
    if _CATALOG is None:
        _CATALOG = _build_catalog()
    return _CATALOG


# Versions of repository models, registered at scan/load time (name "<model>/<version>").
_REGISTERED: dict[str, VariantSpec] = {}


def register_variant(spec: VariantSpec) -> None:
    """Make a repository version servable under `spec.name` (replaces an earlier registration
    of the same name). TidalError if the name is a zoo variant's."""
    if spec.name in _catalog():
        raise TidalError(f"variant name {spec.name!r} is taken by the zoo")
    _REGISTERED[spec.name] = spec


def unregister_variant(name: str) -> None:
    """Forget a registered repository version (no-op when unknown)."""
    _REGISTERED.pop(name, None)


def registered_variants() -> list[VariantSpec]:
    """The repository versions registered in this process."""
    return list(_REGISTERED.values())


def list_variants() -> list[VariantSpec]:
    """All zoo variants: resnet, bert, digits families (smallest first), then noop."""
    return list(_catalog().values())


def variant_names() -> list[str]:
    return list(_catalog()) + list(_REGISTERED)


def get_variant(name: str) -> VariantSpec:
    """The variant `name` (zoo or registered repository version); TidalError naming it and
    listing the valid names otherwise."""
    spec = _catalog().get(name) or _REGISTERED.get(name)
    if spec is None:
        raise TidalError(f"unknown variant {name!r}; valid variants: {', '.join(variant_names())}")
    return spec
