"""Example operators (each file is a standalone operator source: see `path()`)."""

from pathlib import Path

from tidal.core.errors import TidalError

NAMES = ("forward", "fraud_flag", "small_large", "card_count", "oip_model", "crashy")


def path(name: str) -> Path:
    """The source file of built-in operator `name`."""
    if name not in NAMES:
        raise TidalError(f"unknown built-in operator {name!r}; choose from {list(NAMES)}")
    return Path(__file__).with_name(f"{name}.py")
