"""Running comparisons: resolve pipeline, profile, trace and forecasters, then simulate each
policy on the same arrivals (same seed). Used by `tidal simulate` and `tidal reproduce`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tidal.core.errors import TidalError
from tidal.core.pipeline import PipelineSpec, StageSpec
from tidal.core.profile import ProfileSet
from tidal.core.shared import repo_root
from tidal.sim.config import SimConfig
from tidal.sim.engine import SimResult, simulate

# The predictor each paper's planner uses (REFERENCE.md); others plan on observed rates.
PAPER_FORECAST: dict[str, tuple[str, str]] = {
    "themis": ("lstm", "ipa"),
    "ipa": ("lstm", "ipa"),
    "infadapter": ("lstm", "infadapter"),
}
BUILTIN_PIPELINES = ("one-stage", "two-stage", "three-stage")


def load_profiles(name: str) -> ProfileSet:
    """`reference` (measured here), `sponge` / `infadapter` (imported from ../shared), or a
    profile file path."""
    from tidal.profiling import load_imported, load_reference

    if name == "reference":
        return load_reference()
    if name in ("sponge", "infadapter"):
        return load_imported(name)
    p = Path(name)
    if p.suffix == ".json" or p.exists():
        return ProfileSet.load(p)
    raise TidalError(
        f"unknown profile {name!r}; valid: reference, sponge, infadapter or a profile .json path"
    )


def load_pipeline(spec: str | None, profiles: ProfileSet) -> PipelineSpec:
    """A pipeline file, a built-in name (examples/pipelines/NAME.yaml), or None: one stage
    whose candidates are every variant of the profile (imported profiles)."""
    if spec is None:
        names = list(profiles.variants)
        return PipelineSpec(
            name="profile", stages=[StageSpec(name="model", task="model", variants=names)]
        )
    if spec in BUILTIN_PIPELINES:
        return PipelineSpec.load(repo_root() / "examples" / "pipelines" / f"{spec}.yaml")
    return PipelineSpec.load(spec)


def forecaster_for(
    policy: str, choice: str
) -> tuple[Callable[[Sequence[float]], float] | None, str]:
    """The forecaster for `policy`: `paper` = the paper's predictor (LSTM for themis, ipa,
    infadapter; none otherwise), `none`, a predictor name (last, max, ewma, lstm) in the IPA
    setting, or NAME:SETTING (e.g. lstm:infadapter). Returns (callable or None, description)."""
    if choice == "none":
        return None, "none"
    if choice == "paper":
        if policy not in PAPER_FORECAST:
            return None, "none (observed rate)"
        name, setting = PAPER_FORECAST[policy]
    elif ":" in choice:
        name, setting = choice.split(":", 1)
    else:
        name, setting = choice, "ipa"
    from tidal.forecast import create
    from tidal.forecast import setting as get_setting

    pred = create(name, setting)
    if name == "lstm":
        import torch

        torch.set_num_threads(1)  # one small LSTM call; threads only contend on 2 cores

    def f(hist: Sequence[float]) -> float:
        return float(pred.predict(np.asarray(hist, dtype=np.float64)))

    # The predictor's features are maxima of `bucket_s` buckets: refresh once per bucket.
    f.refresh_s = float(get_setting(setting).bucket_s)  # type: ignore[attr-defined]
    return f, f"{name} ({setting} setting, refreshed every {f.refresh_s:g} s)"  # type: ignore[attr-defined]


def write_series(r: SimResult, path: Path) -> None:
    """Time series of one run as CSV: per bin (t_s, load_rps, violation_rate, p99_ms) and, at
    each sample, the cores and replicas in force (cores_t_s, cores, replicas)."""
    s = r.series
    n = max(len(s["t"]), len(s["sample_t"]))

    def col(name: str, i: int) -> str:
        a = s[name]
        return "" if i >= len(a) or np.isnan(a[i]) else f"{float(a[i]):.6g}"

    lines = ["t_s,load_rps,violation_rate,p99_ms,cores_t_s,cores,replicas"]
    for i in range(n):
        lines.append(
            ",".join(
                col(c, i)
                for c in ("t", "load", "violations", "p99_ms", "sample_t", "cores", "replicas")
            )
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Comparison:
    """Results of several policies on one workload."""

    results: list[SimResult]
    forecasts: dict[str, str]
    trace: str
    requests_per_policy: int


def compare(
    pipeline: PipelineSpec,
    profiles: ProfileSet,
    rates: np.ndarray,
    policies: Sequence[str | tuple[str, str, dict[str, Any]]],
    config: SimConfig,
    out_dir: Path | None = None,
    forecast: str = "paper",
    trace_name: str = "",
    progress: Callable[[str], None] | None = None,
) -> Comparison:
    """Simulate each policy on `rates` (same arrivals: same seed). A policy is a name or
    (label, name, constructor kwargs); per-request CSVs go to `out_dir/<label>.csv`."""
    from tidal.planners import available

    entries = [(p, p, {}) if isinstance(p, str) else p for p in policies]
    bad = [name for _, name, _ in entries if name not in available()]
    if bad:
        raise TidalError(f"unknown policy {bad[0]!r}; valid policies: {', '.join(available())}")
    results: list[SimResult] = []
    fdesc: dict[str, str] = {}
    for label, name, kw0 in entries:
        if progress:
            progress(label)
        kw = dict(kw0)
        # "_forecast": this entry's predictor (e.g. a baseline run inside a paper's framework,
        # which feeds it the same predictor as the paper's planner).
        fc, desc = forecaster_for(name, str(kw.pop("_forecast", forecast)))
        fdesc[label] = desc
        csv_path = out_dir / f"{label}.csv" if out_dir is not None else None
        r = simulate(pipeline, profiles, rates, name, config, csv_path, fc, policy_kwargs=kw)
        r.policy = label
        results.append(r)
        if out_dir is not None:
            write_series(r, out_dir / f"{label}-series.csv")
    return Comparison(results, fdesc, trace_name, results[0].requests if results else 0)
