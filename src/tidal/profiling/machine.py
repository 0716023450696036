"""Machine information recorded in every measured profile file."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

SHARED_NOTE = (
    "measured on a 2-core machine shared with other engineers' jobs: figures are noisy "
    "(see load_avg_start/end)"
)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (else platform.processor(), else "unknown")."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ver(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "absent"


def machine_info(mechanism: str = "") -> dict[str, Any]:
    """CPU model, core count, load average, OS and library versions, CPU-control mechanism."""
    return {
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": _ver("onnxruntime"),
        "torch": _ver("torch"),
        "cpu_mechanism": mechanism,
        "load_avg_start": list(os.getloadavg()),
        "note": SHARED_NOTE,
    }
