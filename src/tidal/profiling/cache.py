"""The profile cache: a measured VariantProfile per (ONNX content, CPU model, core count).

Contract: `ProfileCache(dir)` stores one JSON file per key, `<sha256(key)[:24]>.json`, where
the key is the ONNX file's SHA-256, this machine's CPU model and its core count
(`cache_key(onnx_sha256)`), so a profile measured here is reused for the same bytes on the same
kind of machine, whatever the model's name or path, and never for another machine or a
re-exported model. `get(onnx_sha256)` returns the best entry (a full grid beats a quick one),
`put(...)` writes atomically (temp file + rename). Default directory: `$TIDAL_CACHE/profiles`,
else `~/.cache/tidal/profiles`. A corrupt entry is ignored (and logged), never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from tidal.core.profile import VariantProfile
from tidal.profiling.machine import cpu_model

log = logging.getLogger("tidal.profiling")
Kind = Literal["quick", "full"]


def default_cache_dir() -> Path:
    base = os.environ.get("TIDAL_CACHE")
    return Path(base) / "profiles" if base else Path.home() / ".cache" / "tidal" / "profiles"


@dataclass(frozen=True)
class CacheKey:
    """What a cached profile is valid for."""

    onnx_sha256: str
    cpu_model: str
    cores: int

    def digest(self) -> str:
        raw = f"{self.onnx_sha256}|{self.cpu_model}|{self.cores}".encode()
        return hashlib.sha256(raw).hexdigest()[:24]


def cache_key(onnx_sha256: str) -> CacheKey:
    """The key for `onnx_sha256` on this machine (CPU model, CPUs available to this process)."""
    return CacheKey(onnx_sha256, cpu_model(), len(os.sched_getaffinity(0)))


class CacheEntry(BaseModel):
    """One cached profile with its key, its kind and how long measuring took."""

    onnx_sha256: str
    cpu_model: str
    cores: int
    kind: Kind
    measured_s: float
    created: str
    profile: VariantProfile


class ProfileCache:
    """See the module docstring."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.dir = Path(directory) if directory is not None else default_cache_dir()

    def _paths(self, key: CacheKey) -> dict[Kind, Path]:
        d = key.digest()
        return {"full": self.dir / f"{d}.full.json", "quick": self.dir / f"{d}.quick.json"}

    def get(self, onnx_sha256: str, key: CacheKey | None = None) -> CacheEntry | None:
        """The full-grid entry if present, else the quick one, else None."""
        k = key or cache_key(onnx_sha256)
        for kind, p in self._paths(k).items():
            if not p.is_file():
                continue
            try:
                e = CacheEntry.model_validate(json.loads(p.read_text()))
            except (OSError, ValueError, ValidationError) as ex:
                log.warning("profile cache: ignoring corrupt entry %s (%s)", p, ex)
                continue
            if (e.onnx_sha256, e.cpu_model, e.cores) != (k.onnx_sha256, k.cpu_model, k.cores):
                log.warning("profile cache: entry %s is for another key; ignored", p)
                continue
            if e.kind == kind:
                return e
        return None

    def put(self, entry: CacheEntry) -> Path:
        """Store `entry` (replacing one of the same key and kind); returns its path."""
        key = CacheKey(entry.onnx_sha256, entry.cpu_model, entry.cores)
        path = self._paths(key)[entry.kind]
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(entry.model_dump_json(indent=2) + "\n")
        os.replace(tmp, path)
        return path


__all__ = ["CacheEntry", "CacheKey", "ProfileCache", "cache_key", "default_cache_dir"]
