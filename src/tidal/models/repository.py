"""The model repository: user ONNX models in Triton's layout, each version a Tidal variant.

Layout (Triton's, ONNX only)::

    REPO/<model>/config.yaml         optional (Tidal's config, below)
    REPO/<model>/config.pbtxt        optional (Triton's; name, max_batch_size, input, output)
    REPO/<model>/<version>/model.onnx   version = a positive integer

Contract:
- `scan_repository(root)` reads every model folder and returns a `Repository`: the models that
  can be served (`models`, by name) and one `RepoProblem` per bad input (`problems`): a model
  folder without ONNX, an ONNX file that fails to load, a config that contradicts the graph
  (the message names both), a version folder that is not a number, duplicate model names. A
  problem in one model never stops the others. `scan_model(root, folder)` reads one model
  (raises TidalError for its first problem), for load-while-serving.
- Inputs and outputs (names, OIP datatypes, shapes) come from the ONNX graph; a config may
  restate them and must then agree. The batch dimension is the first one and must be dynamic;
  other dimensions must be fixed (in the graph or in the config's dims).
- Versions are ordered by number; each is registered in the catalog as variant
  "<model>/<version>" (`RepoModel.register()`), so the worker, the gateway, the profiler and the
  planners serve it like a zoo variant. Accuracy is unknown (0, labelled) unless the config
  gives it.

config.yaml (every key optional)::

    task: tabular-classification
    max_batch_size: 64
    allow_nan: false
    versions: {1: {accuracy: 0.91, accuracy_source: "held-out 20%", load_time_s: 0.3}}
    pipeline: {name: fraud, position: 0}        # this model is stage 0 of pipeline "fraud"
    inputs: [{name: X, datatype: FP32, dims: [4]}]   # checked against the graph
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tidal.core.errors import TidalError, first_error
from tidal.core.tensors import OIP_TO_NUMPY, TensorMeta
from tidal.models.catalog import InputSpec, VariantSpec, register_variant, unregister_variant
from tidal.models.pbtxt import parse_pbtxt

NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
DEFAULT_MAX_BATCH = 64
LABEL_REPOSITORY = "user model (repository)"
# ONNX TensorProto element types -> OIP datatype names.
ONNX_TYPES = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
    8: "BYTES", 9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64",
}  # fmt: skip


class TensorConfig(BaseModel):
    """An input/output restated in config.yaml; dims exclude the batch dimension (Triton)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    datatype: str | None = Field(default=None, description="OIP name: FP32, INT64, BYTES, ...")
    dims: list[int] | None = Field(default=None, description="Without the batch dim; -1 dynamic.")


class VersionConfig(BaseModel):
    """What config.yaml may say about one version."""

    model_config = ConfigDict(extra="forbid")

    accuracy: float | None = Field(default=None, ge=0.0, le=1.0)
    accuracy_source: str | None = None
    load_time_s: float | None = Field(default=None, ge=0.0, description="Cold start, seconds.")


class PipelineMembership(BaseModel):
    """This model is stage `position` (0 = first) of the linear pipeline `name`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    position: int = Field(ge=0, le=64)


class RepoModelConfig(BaseModel):
    """A model folder's config.yaml (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.\-]+$")
    task: str = Field(default="unknown", min_length=1)
    max_batch_size: int | None = Field(default=None, ge=1, le=65536)
    allow_nan: bool = False
    versions: dict[int, VersionConfig] = Field(default_factory=dict)
    pipeline: PipelineMembership | None = None
    inputs: list[TensorConfig] | None = None
    outputs: list[TensorConfig] | None = None


@dataclass(frozen=True)
class RepoVersion:
    """One version of a repository model: its ONNX file and what the config says about it."""

    model: str
    version: int
    onnx_file: Path
    sha256: str
    accuracy: float | None
    accuracy_source: str
    load_time_s: float | None
    params: int

    @property
    def variant(self) -> str:
        """The catalog variant name: "<model>/<version>"."""
        return f"{self.model}/{self.version}"


@dataclass
class RepoModel:
    """A servable model: its versions (ordered by number) and graph-derived tensors."""

    name: str
    folder: Path
    task: str
    max_batch_size: int
    allow_nan: bool
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    versions: list[RepoVersion]
    pipeline: PipelineMembership | None = None
    config_source: str = "graph only"
    warnings: list[str] = field(default_factory=list)

    def version_variants(self) -> dict[str, str]:
        """Version (as the URL spells it, e.g. "2") -> catalog variant name ("m/2")."""
        return {str(v.version): v.variant for v in self.versions}

    def variants(self) -> list[str]:
        return [v.variant for v in self.versions]

    def spec(self, v: RepoVersion) -> VariantSpec:
        """The catalog VariantSpec of version `v`."""
        first = self.inputs[0]
        dt = first.numpy_dtype
        out_n = int(np.prod(self.outputs[0].sample_shape)) if self.outputs else 1
        return VariantSpec(
            name=v.variant,
            task=self.task,
            family=self.name,
            accuracy=v.accuracy if v.accuracy is not None else 0.0,
            accuracy_source=v.accuracy_source,
            params=v.params,
            input=InputSpec(first.sample_shape, dt, int_high=2, int_low=0),
            label=LABEL_REPOSITORY,
            builder=None,
            num_outputs=max(1, out_n),
            onnx_file=v.onnx_file,
            inputs=self.inputs,
            outputs=self.outputs,
            model=self.name,
            version=str(v.version),
            max_batch_size=self.max_batch_size,
            config_load_time_s=v.load_time_s,
        )

    def register(self) -> None:
        """Register every version in the catalog (idempotent)."""
        for v in self.versions:
            register_variant(self.spec(v))

    def unregister(self) -> None:
        for v in self.versions:
            unregister_variant(v.variant)


@dataclass(frozen=True)
class RepoProblem:
    """A bad input: the path it concerns and the message (naming the file, field or value)."""

    path: str
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class Repository:
    """The result of a scan: servable models by name, and problems (never fatal)."""

    root: Path
    models: dict[str, RepoModel]
    problems: list[RepoProblem]
    folders: dict[str, str] = field(default_factory=dict)  # model name -> folder name

    def pipelines(self) -> dict[str, list[str]]:
        """Pipeline name -> member model names in position order (from `pipeline:` keys).
        TidalError when two members claim the same position."""
        by: dict[str, dict[int, str]] = {}
        for m in self.models.values():
            if m.pipeline is None:
                continue
            slots = by.setdefault(m.pipeline.name, {})
            pos = m.pipeline.position
            if pos in slots:
                raise TidalError(
                    f"pipeline {m.pipeline.name!r}: models {slots[pos]!r} and {m.name!r} both "
                    f"claim position {pos}"
                )
            slots[pos] = m.name
        return {p: [slots[k] for k in sorted(slots)] for p, slots in by.items()}

    def register(self) -> None:
        for m in self.models.values():
            m.register()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's content (streamed)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dims(tp: Any) -> tuple[int, ...] | None:
    if not tp.HasField("tensor_type"):
        return None
    if not tp.tensor_type.HasField("shape"):
        return None
    out = []
    for d in tp.tensor_type.shape.dim:
        out.append(int(d.dim_value) if d.HasField("dim_value") else -1)
    return tuple(out)


def read_graph(path: Path) -> tuple[tuple[TensorMeta, ...], tuple[TensorMeta, ...], int]:
    """(inputs, outputs, parameter count) of an ONNX file. TidalError naming the file when it
    does not load or a tensor has an unsupported type (a sequence/map output, e.g. skl2onnx's
    ZipMap: convert with options={"zipmap": False})."""
    import onnx  # heavy import, only when a repository is read

    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, OSError, ...
        raise TidalError(f"{path}: the ONNX file fails to load: {e}") from None
    g = model.graph
    if len(g.input) == 0 and len(g.output) == 0:
        raise TidalError(f"{path}: the ONNX file fails to load: it has no graph inputs/outputs")
    inits = {i.name for i in g.initializer}
    params = int(sum(math.prod(i.dims) for i in g.initializer))

    def meta(tp: Any, kind: str) -> TensorMeta:
        t = tp.type
        if not t.HasField("tensor_type"):
            raise TidalError(
                f"{path}: {kind} {tp.name!r} is not a tensor ({t.WhichOneof('value')}); "
                "only tensor inputs/outputs are served (skl2onnx: options={'zipmap': False})"
            )
        dt = ONNX_TYPES.get(t.tensor_type.elem_type)
        if dt is None:
            raise TidalError(
                f"{path}: {kind} {tp.name!r} has ONNX element type {t.tensor_type.elem_type}, "
                "which Tidal does not serve"
            )
        dims = _dims(t)
        return TensorMeta(tp.name, dt, dims if dims is not None else (-1,))

    ins = tuple(meta(i, "input") for i in g.input if i.name not in inits)
    outs = tuple(meta(o, "output") for o in g.output)
    return ins, outs, params


def _load_yaml(path: Path) -> RepoModelConfig:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise TidalError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise TidalError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    try:
        return RepoModelConfig.model_validate(raw)
    except ValidationError as e:
        raise TidalError(f"{path}: {first_error(e)}") from None


def _tensor_configs(
    ycfg: RepoModelConfig | None, pb: dict[str, Any] | None, kind: str
) -> tuple[list[TensorConfig] | None, str]:
    """The config's restatement of inputs/outputs (yaml wins), and which file it came from."""
    key = "inputs" if kind == "input" else "outputs"
    if ycfg is not None and getattr(ycfg, key) is not None:
        return getattr(ycfg, key), "config.yaml"
    if pb is not None and kind in pb:
        return [
            TensorConfig(name=t["name"], datatype=t["data_type"], dims=t["dims"]) for t in pb[kind]
        ], "config.pbtxt"
    return None, ""


def _merge(
    graph: tuple[TensorMeta, ...],
    given: list[TensorConfig] | None,
    cfg_file: str,
    onnx_file: Path,
    kind: str,
) -> tuple[TensorMeta, ...]:
    """The graph's tensors, completed by the config's dims; TidalError naming both sides when
    they disagree."""
    if given is None:
        return graph
    by = {t.name: t for t in graph}
    if {t.name for t in given} != set(by):
        raise TidalError(
            f"{cfg_file} lists {kind}s {sorted(t.name for t in given)} but the graph {onnx_file} "
            f"has {sorted(by)}"
        )
    out = []
    for t in given:
        g = by[t.name]
        if t.datatype is not None and t.datatype != g.datatype:
            raise TidalError(
                f"{cfg_file}: {kind} {t.name!r} datatype {t.datatype} contradicts the graph "
                f"{onnx_file}: {g.datatype}"
            )
        shape = g.shape
        if t.dims is not None:
            want = (-1, *t.dims)
            if len(want) != len(g.shape) or any(
                gd != -1 and cd != -1 and gd != cd
                for gd, cd in zip(g.shape[1:], want[1:], strict=True)
            ):
                raise TidalError(
                    f"{cfg_file}: {kind} {t.name!r} dims {t.dims} (batch dim excluded) contradict "
                    f"the graph {onnx_file}: shape {list(g.shape)} (batch dim first)"
                )
            shape = (
                g.shape[0],
                *(gd if gd != -1 else cd for gd, cd in zip(g.shape[1:], want[1:], strict=True)),
            )
        out.append(TensorMeta(t.name, g.datatype, shape))
    return tuple(out)


def _check_servable(ins: tuple[TensorMeta, ...], onnx_file: Path) -> None:
    if not ins:
        raise TidalError(f"{onnx_file}: the graph has no inputs")
    for t in ins:
        if len(t.shape) < 1 or t.shape[0] != -1:
            raise TidalError(
                f"{onnx_file}: input {t.name!r} shape {list(t.shape)}: the first (batch) "
                "dimension must be dynamic (export with a dynamic batch axis)"
            )
        if any(d < 0 for d in t.shape[1:]):
            raise TidalError(
                f"{onnx_file}: input {t.name!r} shape {list(t.shape)} has a dynamic non-batch "
                "dimension: give its size in config.yaml inputs[].dims (or config.pbtxt dims)"
            )


def scan_model(root: Path, folder: str) -> RepoModel:
    """Read model folder `root/folder`; TidalError naming the file/field/value of its first
    problem. Version-folder problems (not a number, no model.onnx) that leave other versions
    servable are returned in `RepoModel.warnings` instead."""
    mdir = root / folder
    if not mdir.is_dir():
        raise TidalError(f"{mdir}: no such model folder")
    ycfg = _load_yaml(mdir / "config.yaml") if (mdir / "config.yaml").is_file() else None
    pb = None
    if (mdir / "config.pbtxt").is_file():
        pb = parse_pbtxt((mdir / "config.pbtxt").read_text(), str(mdir / "config.pbtxt"))
        plat = pb.get("platform") or pb.get("backend")
        if plat not in (None, "onnxruntime_onnx", "onnxruntime"):
            raise TidalError(
                f"{mdir / 'config.pbtxt'}: platform/backend {plat!r}: only ONNX models are served"
            )
    name = (ycfg.name if ycfg else None) or (pb or {}).get("name") or folder
    if not NAME_RE.match(name):
        raise TidalError(f"{mdir}: model name {name!r} must match {NAME_RE.pattern}")
    if pb and pb.get("name") and ycfg and ycfg.name and pb["name"] != ycfg.name:
        raise TidalError(
            f"{mdir}: config.yaml name {ycfg.name!r} contradicts config.pbtxt name {pb['name']!r}"
        )
    filename = (pb or {}).get("default_model_filename") or "model.onnx"
    warnings: list[str] = []
    found: list[tuple[int, Path]] = []
    for sub in sorted(p for p in mdir.iterdir() if p.is_dir()):
        if not sub.name.isdigit() or int(sub.name) < 1:
            warnings.append(f"{sub}: version folder {sub.name!r} is not a positive number; ignored")
            continue
        f = sub / filename
        if not f.is_file():
            warnings.append(f"{sub}: version {sub.name} has no {filename}; ignored")
            continue
        found.append((int(sub.name), f))
    if not found:
        why = "; ".join(warnings) if warnings else "no numbered version folders"
        raise TidalError(f"{mdir}: model folder without ONNX (<version>/{filename}): {why}")
    found.sort()
    vcfg = ycfg.versions if ycfg else {}
    unknown = sorted(set(vcfg) - {v for v, _ in found})
    if unknown:
        raise TidalError(
            f"{mdir / 'config.yaml'}: versions {unknown} have no folder with {filename}; "
            f"versions found: {[v for v, _ in found]}"
        )
    in_cfg, in_src = _tensor_configs(ycfg, pb, "input")
    out_cfg, out_src = _tensor_configs(ycfg, pb, "output")
    ins0: tuple[TensorMeta, ...] | None = None
    outs0: tuple[TensorMeta, ...] = ()
    first_file = found[0][1]
    versions = []
    for num, f in found:
        gin, gout, params = read_graph(f)
        ins = _merge(gin, in_cfg, str(mdir / in_src), f, "input")
        outs = _merge(gout, out_cfg, str(mdir / out_src), f, "output")
        _check_servable(ins, f)
        if ins0 is None:
            ins0, outs0 = ins, outs
        elif ins != ins0:
            raise TidalError(
                f"{f}: inputs {[t.to_json() for t in ins]} differ from version "
                f"{found[0][0]}'s ({first_file}): {[t.to_json() for t in ins0]}; the versions "
                "of one model must take the same inputs"
            )
        vc = vcfg.get(num, VersionConfig())
        src = vc.accuracy_source or (
            "given in config.yaml" if vc.accuracy is not None else "unknown (not in config.yaml)"
        )
        versions.append(
            RepoVersion(name, num, f.resolve(), sha256_file(f), vc.accuracy, src,
                        vc.load_time_s, params)
        )  # fmt: skip
    assert ins0 is not None
    mbs = (ycfg.max_batch_size if ycfg else None) or (pb or {}).get("max_batch_size") or 0
    pb_mbs = (pb or {}).get("max_batch_size")
    if ycfg and ycfg.max_batch_size and pb_mbs and ycfg.max_batch_size != pb_mbs:
        raise TidalError(
            f"{mdir}: config.yaml max_batch_size {ycfg.max_batch_size} contradicts "
            f"config.pbtxt max_batch_size {pb_mbs}"
        )
    srcs = [s for s, present in (("config.yaml", ycfg), ("config.pbtxt", pb)) if present]
    return RepoModel(
        name=name,
        folder=mdir,
        task=ycfg.task if ycfg else "unknown",
        max_batch_size=int(mbs) if mbs else DEFAULT_MAX_BATCH,
        allow_nan=ycfg.allow_nan if ycfg else False,
        inputs=ins0,
        outputs=outs0,
        versions=versions,
        pipeline=ycfg.pipeline if ycfg else None,
        config_source=" + ".join(srcs) + " + graph" if srcs else "graph only",
        warnings=warnings,
    )


def scan_repository(root: str | Path, *, reserved: set[str] | None = None) -> Repository:
    """Read every model folder of `root` (see the module docstring). `reserved`: names already
    taken (zoo variants, YAML models): a repository model with such a name is a problem.
    TidalError only when `root` itself is not a directory."""
    rp = Path(root)
    if not rp.is_dir():
        raise TidalError(f"model repository {rp}: not a directory")
    models: dict[str, RepoModel] = {}
    folders: dict[str, str] = {}
    problems: list[RepoProblem] = []
    dup: set[str] = set()
    for sub in sorted(p for p in rp.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            m = scan_model(rp, sub.name)
        except TidalError as e:
            problems.append(RepoProblem(str(sub), str(e)))
            continue
        problems += [RepoProblem(str(sub), w) for w in m.warnings]
        if m.name in folders or m.name in dup:
            problems.append(
                RepoProblem(
                    str(sub),
                    f"duplicate model name {m.name!r}: folders {folders.get(m.name, '?')!r} and "
                    f"{sub.name!r}; neither is served",
                )
            )
            models.pop(m.name, None)
            dup.add(m.name)
            continue
        if reserved and m.name in reserved:
            problems.append(
                RepoProblem(str(sub), f"duplicate model name {m.name!r}: already defined outside "
                            f"the repository ({sub}); not served")
            )  # fmt: skip
            continue
        models[m.name] = m
        folders[m.name] = sub.name
    for name in dup:
        folders.pop(name, None)
    for n in [n for n in models if n not in folders]:
        models.pop(n)
    return Repository(rp, models, problems, folders)


def oip_dtype(numpy_name: str) -> str:
    """OIP datatype name of a numpy dtype name ("float32" -> "FP32")."""
    for k, v in OIP_TO_NUMPY.items():
        if v == numpy_name:
            return k
    raise TidalError(f"numpy dtype {numpy_name!r} has no OIP datatype")


__all__ = [
    "LABEL_REPOSITORY",
    "PipelineMembership",
    "RepoModel",
    "RepoModelConfig",
    "RepoProblem",
    "RepoVersion",
    "Repository",
    "oip_dtype",
    "read_graph",
    "scan_model",
    "scan_repository",
    "sha256_file",
]
