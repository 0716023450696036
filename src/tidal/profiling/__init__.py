"""tidal.profiling: measure l(variant, batch, cores), fit Sponge's model, profile files.

- `load_reference()`: the reference profile measured on this machine (package data
  `tidal/profiles/reference.json`), used by planners, the simulator and the demo by default.
- `load_imported("sponge" | "infadapter")`: the published profiles from ../shared, imported.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from tidal.core.errors import TidalError
from tidal.core.profile import ProfileSet

REFERENCE_PATH = Path(__file__).resolve().parent.parent / "profiles" / "reference.json"


@lru_cache(maxsize=1)
def _reference() -> ProfileSet:
    if not REFERENCE_PATH.is_file():
        raise TidalError(f"reference profile missing at {REFERENCE_PATH}; run `tidal profile`")
    return ProfileSet.load(REFERENCE_PATH)


def load_reference() -> ProfileSet:
    """The committed reference ProfileSet (a fresh copy: callers may modify it)."""
    return _reference().model_copy(deep=True)


def load_imported(which: str) -> ProfileSet:
    """Sponge's or InfAdapter's published profile, imported (TidalError if ../shared lacks it)."""
    from tidal.profiling.importers import load_shared

    return load_shared(which)


__all__ = ["REFERENCE_PATH", "load_imported", "load_reference"]
