"""Time-series figure of a comparison: load, p99 against the SLO, cores and replicas per
policy, on shared time axes (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tidal.sim.engine import SimResult  # noqa: E402


def plot_results(results: Sequence[SimResult], slo_ms: float, path: Path, title: str = "") -> Path:
    """Write the 4-panel figure to `path` (PNG) and return it."""
    fig, ax = plt.subplots(4, 1, figsize=(10, 9), sharex=True)
    first = results[0].series
    ax[0].plot(first["t"], first["load"], color="black", lw=1)
    ax[0].set_ylabel("load (req/s)")
    for r in results:
        s = r.series
        ax[1].plot(s["t"], s["p99_ms"], lw=1, label=r.policy)
        ax[2].step(s["sample_t"], s["cores"], where="post", lw=1, label=r.policy)
        ax[3].step(s["sample_t"], s["replicas"], where="post", lw=1, label=r.policy)
    ax[1].axhline(slo_ms, color="red", ls="--", lw=1, label="SLO")
    ax[1].set_yscale("log")
    ax[1].set_ylabel("p99 (ms)")
    ax[2].set_ylabel("cores")
    ax[3].set_ylabel("replicas")
    ax[3].set_xlabel("time (s)")
    ax[1].legend(fontsize=7, ncol=4, loc="upper right")
    if title:
        ax[0].set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
