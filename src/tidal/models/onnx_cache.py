"""ONNX export cache: each variant is exported once, cached by a content hash.

Contract: `onnx_path(name)` returns the path of `<cache>/<name>-<hash>.onnx`, exporting it first
(torch.onnx.export with dynamo=False, dynamic batch axis, opset 17) when absent. The hash covers
the variant's source files (architecture + weights file) and the torch version, so editing a model
or retraining digits invalidates the cache. Cache dir: `$TIDAL_CACHE/onnx` if set, else
`~/.cache/tidal/onnx`. Writes are atomic (temp file + rename), so concurrent exporters are safe.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

from tidal.models.catalog import get_variant

_HERE = Path(__file__).parent
_SOURCES = {
    "resnet": ["resnet.py"],
    "bert": ["bert.py"],
    "digits": ["digits.py", "weights/digits.npz"],
    "noop": ["noop.py"],
}
OPSET = 17


def cache_dir() -> Path:
    """The ONNX cache directory (created on demand)."""
    base = os.environ.get("TIDAL_CACHE")
    d = Path(base) / "onnx" if base else Path.home() / ".cache" / "tidal" / "onnx"
    d.mkdir(parents=True, exist_ok=True)
    return d


def content_hash(name: str) -> str:
    """16 hex digits over the variant's name, input spec, source files and torch version."""
    spec = get_variant(name)
    h = hashlib.sha256()
    h.update(f"{name}|{spec.input.shape}|{spec.input.dtype}|opset{OPSET}".encode())
    for rel in _SOURCES[spec.family]:
        p = _HERE / rel
        if p.is_file():
            h.update(p.read_bytes())
    try:
        from importlib.metadata import version

        h.update(version("torch").encode())
    except Exception:  # torch metadata missing: hash stays source-only
        pass
    return h.hexdigest()[:16]


def onnx_path(name: str) -> Path:
    """Path of the cached ONNX file of variant `name`, exporting it if needed. A repository
    version is served from its own file, never exported."""
    own = get_variant(name).onnx_file
    if own is not None:
        return own
    target = cache_dir() / f"{name}-{content_hash(name)}.onnx"
    if not target.is_file():
        export(name, target)
    return target


def export(name: str, target: Path) -> None:
    """Export variant `name` to `target` (input "input", output "output", dynamic batch)."""
    import torch

    spec = get_variant(name)
    model = spec.build()
    example = torch.from_numpy(spec.input.sample(2))
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    # Tracer warnings (shape-derived constants) are expected for a fixed-shape trace.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    os.replace(tmp, target)
