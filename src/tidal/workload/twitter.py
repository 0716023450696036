"""The Twitter per-second trace (Aug 2021, 22 days) and the papers' named windows.

The file lives in ``../shared/traces/twitter_2021-08_per_second.txt`` (one line of integers,
entry i = requests during second i); it is read in place, never copied, and a parsed ``.npy``
is cached under ``$TIDAL_CACHE`` (default ``~/.cache/tidal``) keyed by the file's size and
mtime. Windows are seconds into the file, as the authors' configs give them
(../shared/traces/PROVENANCE.md):

| name | seconds | default damping | source |
|---|---|---|---|
| bursty | 1301160-1302360 | 8 | IPA video configs |
| steady-low | 1299600-1300800 | 8 | IPA |
| steady-high | 1768800-1769400 twice | 8 | IPA |
| fluctuating | 1301400-1302000 + 1308600-1309200 | 8 | IPA |
| infadapter | 15*86400+82*60 .. +103*60 | 1 | InfAdapter workload.py |
| sponge | 1296000 .. +1200 | 1 | Sponge notebook |
| START-END | START..END | 1 | any |

Damping is integer division of each second's count, as the authors' loader does
(``workload // damping_factor``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tidal.core.errors import TidalError
from tidal.core.shared import shared_path

TRACE_FILE = ("traces", "twitter_2021-08_per_second.txt")
SYNTHETIC_HINT = (
    "use a synthetic trace instead, e.g. --trace synthetic:step (or spike, ramp, diurnal)"
)


@dataclass(frozen=True)
class Window:
    """A named window: one or more [start, end) second ranges and the paper's damping."""

    segments: tuple[tuple[int, int], ...]
    damping: int
    source: str

    @property
    def seconds(self) -> int:
        return sum(e - s for s, e in self.segments)


_DAY = 86400
WINDOWS: dict[str, Window] = {
    "bursty": Window(((1301160, 1302360),), 8, "IPA bursty (damping 8)"),
    "steady-low": Window(((1299600, 1300800),), 8, "IPA steady-low (damping 8)"),
    "steady-high": Window(((1768800, 1769400), (1768800, 1769400)), 8, "IPA steady-high x2"),
    "fluctuating": Window(((1301400, 1302000), (1308600, 1309200)), 8, "IPA fluctuating"),
    "infadapter": Window(
        ((15 * _DAY + 82 * 60, 15 * _DAY + 103 * 60),), 1, "InfAdapter day 15 min 82-103"
    ),
    "sponge": Window(((1296000, 1296000 + 1200),), 1, "Sponge bursty, 20 min from 1296000"),
}


def trace_path() -> Path:
    """Path of the Twitter trace; TidalError naming the expected path and the alternative."""
    p = shared_path(*TRACE_FILE)
    if p is None:
        raise TidalError(
            "Twitter trace not found: expected ../shared/traces/twitter_2021-08_per_second.txt "
            f"(or $TIDAL_SHARED/traces/...); {SYNTHETIC_HINT}"
        )
    return p


def cache_dir() -> Path:
    """Where parsed traces are cached ($TIDAL_CACHE or ~/.cache/tidal)."""
    return Path(os.environ.get("TIDAL_CACHE", Path.home() / ".cache" / "tidal"))


def full_trace() -> np.ndarray:
    """The whole trace as int64 counts per second (1,899,061 values), cached as .npy."""
    src = trace_path()
    st = src.stat()
    cached = cache_dir() / f"twitter_{st.st_size}_{int(st.st_mtime)}.npy"
    if cached.is_file():
        try:
            return np.load(cached)
        except (OSError, ValueError):
            pass  # corrupt cache: re-parse below
    arr = np.array(src.read_text().split(), dtype=np.int64)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, arr)
        tmp.replace(cached)
    except OSError:
        pass  # read-only home: parse each time
    return arr


def window(name: str) -> Window:
    """The named window, or START-END; TidalError naming the bad value otherwise."""
    if name in WINDOWS:
        return WINDOWS[name]
    parts = name.split("-")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        start, end = int(parts[0]), int(parts[1])
        if end <= start:
            raise TidalError(f"twitter window {name!r}: END ({end}) must be > START ({start})")
        return Window(((start, end),), 1, f"seconds {start}-{end}")
    raise TidalError(
        f"unknown twitter window {name!r}; valid: {', '.join(WINDOWS)} or START-END (seconds)"
    )


def twitter_rates(name: str, damping: int | None = None) -> np.ndarray:
    """Requests per second of a window, after integer division by `damping`
    (None = the paper's damping for a named window, 1 for START-END)."""
    w = window(name)
    d = w.damping if damping is None else damping
    if d < 1:
        raise TidalError(f"damping must be >= 1, got {d}")
    full = full_trace()
    for s, e in w.segments:
        if s < 0 or e > len(full):
            raise TidalError(
                f"twitter window {name!r} ({s}-{e}) is out of range: the trace has "
                f"{len(full)} seconds (0-{len(full)})"
            )
    rates = np.concatenate([full[s:e] for s, e in w.segments])
    return (rates // d).astype(np.float64)
