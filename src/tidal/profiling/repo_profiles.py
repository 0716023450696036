"""Profiles and pipelines of a model repository for the planners and the simulator
(`tidal plan` / `tidal simulate --model-repository DIR`), and the full-grid profile of one
version (`tidal profile REPO/<model>/<version>`).

Contract:
- `repository_profiles(root)` registers the repository's versions and returns a ProfileSet:
  each version's cached profile (full beats quick; `tidal.profiling.cache`) or, when it was
  never profiled on this kind of machine, the conservative estimate, listed in
  `machine["estimated"]` so callers can say so.
- `repository_pipeline(repo, name)` is the PipelineSpec of a repository model (one stage,
  its versions as candidates) or of a `pipeline:` of the repository.
- `profile_version(path, grid, budget)` measures REPO/<model>/<version> over the grid (one
  worker resized in place: `profiler.profile_variants`) and stores it in the cache as "full".
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tidal.core.errors import TidalError
from tidal.core.pipeline import PipelineSpec, StageSpec
from tidal.core.profile import ProfileSet
from tidal.models.catalog import get_variant
from tidal.models.repository import Repository, scan_model, scan_repository
from tidal.profiling.auto import estimated_profile
from tidal.profiling.cache import CacheEntry, ProfileCache, cache_key
from tidal.profiling.machine import cpu_model


def repository_profiles(
    root: str | Path, cache: ProfileCache | None = None
) -> tuple[ProfileSet, Repository]:
    """See the module docstring."""
    repo = scan_repository(root)
    repo.register()
    c = cache or ProfileCache()
    out = {}
    estimated = []
    for m in repo.models.values():
        for v in m.versions:
            e = c.get(v.sha256)
            spec = get_variant(v.variant)
            if e is not None:
                out[v.variant] = e.profile.model_copy(
                    update={"name": v.variant, "accuracy": spec.accuracy, "task": spec.task}
                )
            else:
                out[v.variant] = estimated_profile(spec)
                estimated.append(v.variant)
    machine: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "estimated": estimated,
        "problems": [p.message for p in repo.problems],
    }
    return ProfileSet(source=f"repository {root}", machine=machine, variants=out), repo


def repository_pipeline(repo: Repository, name: str) -> PipelineSpec:
    """A repository model (one stage) or repository pipeline as a PipelineSpec."""
    if name in repo.models:
        m = repo.models[name]
        return PipelineSpec(
            name=name, stages=[StageSpec(name=name, task=m.task, variants=m.variants())]
        )
    pipes = repo.pipelines()
    if name in pipes:
        return PipelineSpec(
            name=name,
            stages=[
                StageSpec(name=f"{name}.{mn}", task=repo.models[mn].task,
                          variants=repo.models[mn].variants())
                for mn in pipes[name]
            ],
        )  # fmt: skip
    raise TidalError(
        f"{repo.root}: no model or pipeline {name!r}; models: {sorted(repo.models)}, "
        f"pipelines: {sorted(pipes)}"
    )


def split_version_path(path: str | Path) -> tuple[Path, str, int] | None:
    """REPO/<model>/<version> -> (REPO, model folder, version); None if `path` is not one."""
    p = Path(path)
    if not p.name.isdigit() or not p.is_dir():
        return None
    return p.parent.parent, p.parent.name, int(p.name)


def profile_version(
    path: str | Path,
    grid: Any,
    budget: Any,
    *,
    progress: Any = None,
    cache: ProfileCache | None = None,
    extrapolate: bool = False,
) -> tuple[ProfileSet, Path]:
    """Full-grid profile of REPO/<model>/<version>, stored in the cache; (profile set, entry
    path). TidalError naming the path when it is not a version folder of a valid model."""
    from tidal.profiling.profiler import profile_variants

    parts = split_version_path(path)
    if parts is None:
        raise TidalError(f"{path}: not a version folder REPO/<model>/<version>")
    root, folder, version = parts
    m = scan_model(root, folder)
    v = next((x for x in m.versions if x.version == version), None)
    if v is None:
        raise TidalError(f"{path}: version {version} has no model file; versions: "
                         f"{[x.version for x in m.versions]}")  # fmt: skip
    m.register()
    t0 = datetime.now(UTC)
    ps = profile_variants([v.variant], grid, budget, progress=progress, extrapolate=extrapolate)
    spent = (datetime.now(UTC) - t0).total_seconds()
    key = cache_key(v.sha256)
    entry = CacheEntry(
        onnx_sha256=v.sha256,
        cpu_model=key.cpu_model,
        cores=key.cores,
        kind="full",
        measured_s=spent,
        created=t0.isoformat(timespec="seconds"),
        profile=ps.variants[v.variant],
    )
    return ps, (cache or ProfileCache()).put(entry)


__all__ = [
    "profile_version",
    "repository_pipeline",
    "repository_profiles",
    "split_version_path",
]
