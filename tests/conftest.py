"""Suite-wide rules: what a marker promises, and no silent skips.

- ``@pytest.mark.shared``: the test reads ``../shared`` (traces, profiles, captures). Without
  it the test is skipped with a reason that names the directory, and the skip is listed in
  the ``-ra`` summary. CI always has ``../shared``.
- ``redis``, ``chromium``, ``netns``, ``node``, ``java``, ``curl``: the test needs that system
  program. When it is missing the test FAILS with the one command that installs it, unless
  ``TIDAL_ALLOW_MISSING_SYSTEM=1`` is set (then it is skipped, loudly). ``make test``
  installs them first (tools/system-deps.sh), so under make nothing is skipped.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tidal.core.shared import shared_dir

# marker -> (programs of which one must be on PATH, the apt-get package that provides it)
_SYSTEM: dict[str, tuple[tuple[str, ...], str]] = {
    "redis": (("redis-server",), "redis-server"),
    "chromium": (("chromium", "chromium-browser"), "chromium"),
    "netns": (("ip",), "iproute2"),
    "node": (("node",), "nodejs"),
    "java": (("javac",), "default-jdk-headless"),
    "curl": (("curl",), "curl"),
}


def _missing(marker: str) -> str | None:
    programs, package = _SYSTEM[marker]
    if any(shutil.which(p) for p in programs):
        return None
    return f"needs {programs[0]}: run `sudo apt-get install -y {package}` (or `make test`)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    allow_missing = os.environ.get("TIDAL_ALLOW_MISSING_SYSTEM") == "1"
    have_shared = shared_dir() is not None
    for item in items:
        if item.get_closest_marker("shared") is not None and not have_shared:
            item.add_marker(
                pytest.mark.skip(reason="needs ../shared (or $TIDAL_SHARED): absent here")
            )
        for marker in _SYSTEM:
            if item.get_closest_marker(marker) is None:
                continue
            why = _missing(marker)
            if why is None:
                continue
            if allow_missing:
                item.add_marker(pytest.mark.skip(reason=why + " [TIDAL_ALLOW_MISSING_SYSTEM=1]"))
            else:
                item.stash[_MISSING] = why


_MISSING = pytest.StashKey[str]()


def pytest_runtest_setup(item: pytest.Item) -> None:
    why = item.stash.get(_MISSING, None)
    if why is not None:
        pytest.fail(why, pytrace=False)
