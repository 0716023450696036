"""The on-disk operator registry: names, versions, sources or commands.

Layout: ``<root>/<name>/<version>/meta.json`` plus the source file (``operator.py`` or
``operator.js``) when the version was registered from source. Versions count from 1 and are
never rewritten. Names match ``[a-z0-9][a-z0-9_-]{0,63}``.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from tidal.core.errors import TidalError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_SOURCE_BYTES = 1024 * 1024


class UnknownOperator(TidalError):
    """No version of this operator is registered (HTTP 404)."""


class VersionSpec(BaseModel):
    """What a client registers: exactly one of `source` or `command`, plus optional
    per-version overrides of the node manager's deployment defaults (None: the default)."""

    language: Literal["python", "node", "command"] = "python"
    source: str | None = Field(default=None, max_length=MAX_SOURCE_BYTES)
    command: list[str] | None = Field(default=None, min_length=1)
    empty_state: bool = Field(default=False, description="Start from empty state on update.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment.")
    checkpoint_every: int | None = Field(
        default=None, ge=0, le=1_000_000, description="K: checkpoint every K commits (0: off)."
    )
    pop: Literal["commit", "pop"] | None = None
    flush_ms: float | None = Field(default=None, gt=0, le=10_000)
    max_failures: int | None = Field(default=None, ge=1, le=1000)
    network: bool = Field(default=False, description="The operator needs the network.")

    @model_validator(mode="after")
    def _one_of(self) -> VersionSpec:
        if (self.source is None) == (self.command is None):
            raise ValueError("give exactly one of 'source' or 'command'")
        if self.command is not None and self.language != "command":
            raise ValueError(f"a 'command' version needs language 'command', got {self.language!r}")
        if self.source is not None and self.language == "command":
            raise ValueError("language 'command' takes 'command', not 'source'")
        return self


class VersionInfo(BaseModel):
    name: str
    version: int
    spec: VersionSpec
    path: str

    @property
    def source_file(self) -> Path | None:
        if self.spec.source is None:
            return None
        ext = "js" if self.spec.language == "node" else "py"
        return Path(self.path) / f"operator.{ext}"


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise TidalError(f"bad operator name {name!r}: use [a-z0-9][a-z0-9_-]{{0,63}}")
    return name


class Registry:
    """Operator versions under `root` (created if missing). Thread-safe."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)  # sandboxed operators get a copy of their own source only
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        d = self.root / name
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())

    def register(self, name: str, spec: VersionSpec) -> VersionInfo:
        check_name(name)
        with self._lock:
            vs = self.versions(name)
            v = (vs[-1] + 1) if vs else 1
            d = self.root / name / str(v)
            d.mkdir(parents=True)
            info = VersionInfo(name=name, version=v, spec=spec, path=str(d))
            if spec.source is not None and info.source_file is not None:
                info.source_file.write_text(spec.source)
            (d / "meta.json").write_text(
                spec.model_dump_json(exclude={"source"}, exclude_none=True, indent=1)
            )
        return info

    def get(self, name: str, version: int | None = None) -> VersionInfo:
        """A version (the latest when None); TidalError names the operator or version."""
        vs = self.versions(name)
        if not vs:
            raise UnknownOperator(f"unknown operator {name!r}; registered: {self.names()}")
        v = vs[-1] if version is None else version
        if v not in vs:
            raise TidalError(f"operator {name!r} has no version {v}; versions: {vs}")
        d = self.root / name / str(v)
        meta = json.loads((d / "meta.json").read_text())
        src = d / ("operator.js" if meta.get("language") == "node" else "operator.py")
        if src.is_file():
            meta["source"] = src.read_text()
        return VersionInfo(name=name, version=v, spec=VersionSpec.model_validate(meta), path=str(d))
