"""Locating the shared research data (`../shared`: traces, profiles, packet captures).

Tidal never copies these files into the repository. Lookup order: `$TIDAL_SHARED`, then
`../shared` next to the repository root, then `../shared` next to the current directory.
When none exists, callers fall back to synthetic data and must say so.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[3]


def shared_dir() -> Path | None:
    """The shared data directory, or None when this machine has none."""
    candidates = []
    env = os.environ.get("TIDAL_SHARED")
    if env:
        candidates.append(Path(env))
    candidates += [_REPO_ROOT.parent / "shared", Path.cwd().parent / "shared"]
    for c in candidates:
        if (c / "traces").is_dir() or (c / "data").is_dir():
            return c.resolve()
    return None


def shared_path(*parts: str) -> Path | None:
    """`shared_dir()/parts...` if that file or directory exists, else None."""
    base = shared_dir()
    if base is None:
        return None
    p = base.joinpath(*parts)
    return p if p.exists() else None


def repo_root() -> Path:
    """The repository root (where pyproject.toml lives) for an editable install."""
    return _REPO_ROOT
