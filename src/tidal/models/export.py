"""Write zoo variants in repository form, so the zoo and user models share one code path.

Contract: `export_zoo(root, variants)` writes, per family, `root/<family>/<k>/model.onnx` (the
cached ONNX export, copied) and `root/<family>/config.yaml` (task, max_batch_size, and per
version the accuracy with its source and the measured cold start). The version number k is
the variant's position in its family (resnet18 = 1, resnet34 = 2, ...; smallest first), so
exporting a subset later adds versions without renumbering. An existing config.yaml is merged
(other versions kept). Returns {variant: (model, version)}. Unknown names: TidalError listing
the valid ones (before anything is written).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from tidal.core.errors import TidalError
from tidal.models.catalog import get_variant, list_variants
from tidal.models.onnx_cache import onnx_path

EXPORT_MAX_BATCH = 64


def _version_numbers() -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    count: dict[str, int] = {}
    for v in list_variants():
        count[v.family] = count.get(v.family, 0) + 1
        out[v.name] = (v.family, count[v.family])
    return out


def export_zoo(root: str | Path, variants: list[str] | None = None) -> dict[str, tuple[str, int]]:
    """See the module docstring. Default: every zoo variant except noop."""
    names = variants or [v.name for v in list_variants() if v.family != "noop"]
    specs = [get_variant(n) for n in names]  # unknown names fail first
    numbers = _version_numbers()
    rp = Path(root)
    done: dict[str, tuple[str, int]] = {}
    for spec in specs:
        if spec.onnx_file is not None:
            raise TidalError(f"{spec.name!r} is a repository version, not a zoo variant")
        family, k = numbers[spec.name]
        vdir = rp / family / str(k)
        vdir.mkdir(parents=True, exist_ok=True)
        tmp = vdir / f".model.onnx.tmp{os.getpid()}"
        shutil.copyfile(onnx_path(spec.name), tmp)
        os.replace(tmp, vdir / "model.onnx")
        cfg_path = rp / family / "config.yaml"
        cfg: dict[str, Any] = {}
        if cfg_path.is_file():
            cfg = yaml.safe_load(cfg_path.read_text()) or {}
        cfg.setdefault("task", spec.task)
        cfg.setdefault("max_batch_size", EXPORT_MAX_BATCH)
        entry: dict[str, Any] = {
            "accuracy": float(spec.accuracy),
            "accuracy_source": f"{spec.accuracy_source} [{spec.label}; zoo variant {spec.name}]",
        }
        if spec.load_time_s is not None:
            entry["load_time_s"] = round(float(spec.load_time_s), 3)
        cfg.setdefault("versions", {})[k] = entry
        cfg_path.write_text(
            f"# written by `tidal models export`: zoo family {family!r}\n"
            + yaml.safe_dump(cfg, sort_keys=False)
        )
        done[spec.name] = (family, k)
    return done


__all__ = ["export_zoo"]
