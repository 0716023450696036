"""`file:PATH` traces: a workload from any file, as requests per second.

Two formats, detected from the content (comments after ``#`` and blank lines are skipped;
the first number of each line is read, so CSV rows work too):
- rates: one number per line, the requests of that second (>= 0);
- timestamps: one arrival time per line in seconds (or ms, ``unit=ms``), non-decreasing, with
  a fractional part or an epoch-like value; they are counted into 1-s bins from the first.
``format=rates|timestamps`` forces one. Options after commas:
``file:PATH,compress=30,scale_to_peak=200,format=timestamps,unit=ms``.

Transforms (in this order): `compress` k merges k seconds into one (every request kept, the
trace plays k times faster); `scale_to_peak` R scales every second so the busiest is R req/s
(counts are rounded to integers; a trace of zeros stays zeros).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tidal.core.errors import TidalError

_KEYS = ("compress", "scale_to_peak", "format", "unit")


def parse_spec(rest: str) -> tuple[Path, dict[str, str]]:
    """`PATH[,key=value...]` -> (path, options); TidalError naming an unknown key."""
    parts = rest.split(",")
    opts: dict[str, str] = {}
    for p in parts[1:]:
        key, sep, value = p.partition("=")
        if not sep or key not in _KEYS:
            raise TidalError(f"file trace option {p!r}: expected KEY=VALUE, KEY in {_KEYS}")
        opts[key] = value
    if not parts[0]:
        raise TidalError("file trace needs a path: file:PATH[,compress=K][,scale_to_peak=R]")
    return Path(parts[0]), opts


def read_numbers(path: Path) -> np.ndarray:
    """The first number of every non-comment line."""
    if not path.is_file():
        raise TidalError(f"trace file not found: {path}")
    vals = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        tok = line.replace(",", " ").split()[0]
        try:
            vals.append(float(tok))
        except ValueError:
            raise TidalError(f"{path}:{n}: not a number: {tok!r}") from None
    if not vals:
        raise TidalError(f"trace file {path} has no numbers")
    return np.asarray(vals, dtype=np.float64)


def detect(values: np.ndarray) -> str:
    """ "timestamps" if the values are non-decreasing and fractional or epoch-like, else
    "rates"."""
    mono = bool(np.all(np.diff(values) >= 0)) if len(values) > 1 else False
    fractional = bool(np.any(np.abs(values - np.round(values)) > 1e-9))
    epoch = bool(values[0] > 1e6)
    return "timestamps" if mono and (fractional or epoch) else "rates"


def bin_timestamps(ts: np.ndarray) -> np.ndarray:
    """Arrival times (s) -> counts per second from the first arrival."""
    if np.any(np.diff(ts) < 0):
        raise TidalError("timestamps must be non-decreasing")
    rel = ts - ts[0]
    return np.bincount(np.floor(rel).astype(np.int64)).astype(np.float64)


def scale_to_peak(rates: np.ndarray, peak: float) -> np.ndarray:
    """Scale so the busiest second has `peak` requests (rounded counts)."""
    if peak <= 0:
        raise TidalError(f"scale_to_peak must be > 0, got {peak}")
    top = float(rates.max()) if len(rates) else 0.0
    if top <= 0:
        return rates
    return np.round(rates * (peak / top))


def file_rates(rest: str) -> tuple[np.ndarray, int, float | None]:
    """Rates of `file:` spec body `rest` before the transforms, with the spec's compress and
    scale_to_peak (1 and None when not given)."""
    path, opts = parse_spec(rest)
    vals = read_numbers(path)
    fmt = opts.get("format") or detect(vals)
    if fmt not in ("rates", "timestamps"):
        raise TidalError(f"file trace format must be rates or timestamps, got {fmt!r}")
    if fmt == "timestamps":
        unit = opts.get("unit", "s")
        if unit not in ("s", "ms"):
            raise TidalError(f"file trace unit must be s or ms, got {unit!r}")
        rates = bin_timestamps(vals / (1000.0 if unit == "ms" else 1.0))
    else:
        if np.any(vals < 0):
            raise TidalError(f"{path}: rates must be >= 0")
        rates = vals
    try:
        compress = int(opts.get("compress", "1"))
        peak = float(opts["scale_to_peak"]) if "scale_to_peak" in opts else None
    except ValueError as e:
        raise TidalError(f"file trace option: {e}") from None
    return rates, compress, peak
