"""Import published profiles (`../shared/traces/profiles/`) into Tidal's ProfileSet format.

- Sponge (`sponge_latency_batch_cores.csv`): 30 measured (batch, cores, latency_s) points of a
  YOLOv5 variant on CPU, up to 32 cores. Imported as variant `sponge-yolov5` and fitted with
  Sponge's model (REFERENCE.md: gamma=18.3, delta=4.49, epsilon=45.5, eta=1.05 ms, R^2=0.97).
- InfAdapter (`infadapter_resnet_capacity_Feb_21.csv`): capacity (highest rps whose p99 stays
  within the SLA, batch 1, TensorFlow Serving) of ResNet-18..152 on 1..20 cores. Imported at
  SLA 750 ms as `CapacityPoint`s; `cap_m(c) = 0.8*(a_m*c + b_m)` is fitted as InfAdapter does
  (least squares on cores {1,2,4,8,16}) and stored in `machine["capacity_fit"]`. The LatencyFit
  is made consistent with the capacities: at batch 1 a replica serving back to back runs at
  1000/l(1,c) rps, so the points are l(1,c) = 1000/capacity(c) ms and the fit is
  l = gamma/c + delta (gamma*b/c + delta*b: the data has batch 1 only, so no batching gain is
  assumed; epsilon = eta = 0). Load times and accuracies are InfAdapter's (REFERENCE.md).
Contract: a missing file or a malformed row raises TidalError naming the path and the row.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tidal.core.errors import TidalError
from tidal.core.profile import CapacityPoint, LatencyFit, ProfilePoint, ProfileSet, VariantProfile
from tidal.profiling.fit import fit_quality, fit_sponge

SPONGE_FILE = "sponge_latency_batch_cores.csv"
INFADAPTER_FILE = "infadapter_resnet_capacity_Feb_21.csv"
INFADAPTER_SLA_MS = 750.0
INFADAPTER_HEADROOM = 0.8
INFADAPTER_FIT_CORES = (1, 2, 4, 8, 16)
RESNET_ACC = {18: 0.6976, 34: 0.7331, 50: 0.7613, 101: 0.7737, 152: 0.7831}
RESNET_LOAD_S = {18: 6.44, 34: 6.79, 50: 6.82, 101: 7.77, 152: 8.52}


def _rows(path: str | Path, required: set[str]) -> list[dict[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise TidalError(f"profile CSV not found: {p}")
    try:
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise TidalError(f"corrupt profile CSV {p}: {e}") from None
    if not rows:
        raise TidalError(f"profile CSV {p} has no rows")
    missing = required - set(rows[0])
    if missing:
        raise TidalError(f"profile CSV {p} lacks columns {sorted(missing)}")
    return rows


def _num(row: dict[str, str], col: str, path: str | Path, i: int) -> float:
    try:
        v = float(row[col])
    except (TypeError, ValueError):
        raise TidalError(
            f"{path}: row {i + 2}: column {col} = {row.get(col)!r} is not a number"
        ) from None
    if not np.isfinite(v):
        raise TidalError(f"{path}: row {i + 2}: column {col} = {v} is not finite")
    return v


def import_sponge(path: str | Path) -> ProfileSet:
    """The Sponge latency grid as a one-variant ProfileSet (`sponge-yolov5`), fitted."""
    rows = _rows(path, {"batch", "cores", "latency_s"})
    points = []
    for i, r in enumerate(rows):
        b, c, lat = (_num(r, k, path, i) for k in ("batch", "cores", "latency_s"))
        if b < 1 or c <= 0 or lat <= 0:
            raise TidalError(f"{path}: row {i + 2}: batch={b}, cores={c}, latency_s={lat} invalid")
        points.append(ProfilePoint(batch=int(b), cores=c, p50_ms=lat * 1000, p99_ms=lat * 1000))
    fit = fit_sponge(points)
    vp = VariantProfile(
        name="sponge-yolov5",
        task="object-detection",
        accuracy=0.0,
        accuracy_source="unknown: Sponge's trace gives latency only (YOLOv5 variant on CPU)",
        points=points,
        fit=fit,
    )
    return ProfileSet(
        source=f"imported: Sponge ({Path(path).name})",
        machine={
            "note": "Sponge prototype measurements (saeid93/sponge), CPU, up to 32 cores; the "
            "trace has no load time: load_time_s is the default 1.0 s"
        },
        variants={vp.name: vp},
    )


def import_infadapter(path: str | Path, sla_ms: float = INFADAPTER_SLA_MS) -> ProfileSet:
    """InfAdapter's ResNet capacities at `sla_ms` as a ProfileSet (see the module docstring)."""
    rows = _rows(path, {"CPU", "ARCH", "SLA", "capacity", "BATCH"})
    caps: dict[int, dict[float, float]] = {}
    for i, r in enumerate(rows):
        if _num(r, "SLA", path, i) != sla_ms or _num(r, "BATCH", path, i) != 1:
            continue
        arch = int(_num(r, "ARCH", path, i))
        if arch not in RESNET_ACC:
            raise TidalError(f"{path}: row {i + 2}: ARCH {arch} is not a ResNet depth")
        caps.setdefault(arch, {})[_num(r, "CPU", path, i)] = _num(r, "capacity", path, i)
    if not caps:
        raise TidalError(f"{path}: no rows at SLA {sla_ms:g} ms and batch 1")
    variants: dict[str, VariantProfile] = {}
    cap_fits: dict[str, dict[str, float | list[int]]] = {}
    for arch in sorted(caps):
        table = caps[arch]
        xs = [c for c in INFADAPTER_FIT_CORES if c in table]
        if len(xs) < 2:
            raise TidalError(f"{path}: ResNet-{arch} has fewer than 2 of cores {xs}")
        a, b = np.polyfit(xs, [table[c] for c in xs], 1)
        name = f"resnet{arch}"
        cap_fits[name] = {"a": float(a), "b": float(b), "headroom": INFADAPTER_HEADROOM,
                          "sla_ms": sla_ms, "fit_cores": list(xs)}  # fmt: skip
        points = [
            ProfilePoint(batch=1, cores=c, p50_ms=1000.0 / r, p99_ms=1000.0 / r)
            for c, r in sorted(table.items())
            if r > 0
        ]
        fit = _fit_inverse(points)
        variants[name] = VariantProfile(
            name=name,
            task="image-classification",
            accuracy=RESNET_ACC[arch],
            accuracy_source="ImageNet top-1 (InfAdapter, REFERENCE.md)",
            load_time_s=RESNET_LOAD_S[arch],
            points=points,
            fit=fit,
            capacity=[
                CapacityPoint(cores=c, rps=r, sla_ms=sla_ms) for c, r in sorted(table.items())
            ],
        )
    return ProfileSet(
        source=f"imported: InfAdapter ({Path(path).name})",
        machine={
            "note": "InfAdapter measurements (TensorFlow Serving, CPU, batch 1, up to 20 cores)",
            "capacity_fit": cap_fits,
            "capacity_model": "cap_m(c) = headroom * (a*c + b)",
        },
        variants=variants,
    )


def _fit_inverse(points: list[ProfilePoint]) -> LatencyFit:
    """l(1,c) = gamma/c + delta by relative least squares (gamma, delta >= 0)."""
    c = np.array([p.cores for p in points])
    y = np.array([p.p50_ms for p in points])
    # Relative weighting: divide both sides by y.
    design = np.vstack([1.0 / c, np.ones_like(c)]).T / y[:, None]
    coef, *_ = np.linalg.lstsq(design, np.ones_like(y), rcond=None)
    gamma, delta = max(0.0, float(coef[0])), max(0.0, float(coef[1]))
    fit = LatencyFit(gamma=gamma, delta=delta, epsilon=0.0, eta=0.0)
    r2, worst = fit_quality(fit, points)
    return fit.model_copy(update={"r2": r2, "max_rel_residual": worst})


def load_shared(which: str) -> ProfileSet:
    """Import "sponge" or "infadapter" from the shared data (`tidal.core.shared`)."""
    from tidal.core.shared import shared_path

    files = {"sponge": SPONGE_FILE, "infadapter": INFADAPTER_FILE}
    if which not in files:
        raise TidalError(f"unknown imported profile {which!r}; choose from {sorted(files)}")
    p = shared_path("traces", "profiles", files[which])
    if p is None:
        raise TidalError(
            f"shared profile traces/profiles/{files[which]} not found (set TIDAL_SHARED or "
            "place ../shared next to the repository)"
        )
    return import_sponge(p) if which == "sponge" else import_infadapter(p)
