"""`tidal`'s memory between decisions (`TidalState`), passed in and out of `plan`."""

from __future__ import annotations

from dataclasses import dataclass

from tidal.core.plan import Plan


@dataclass(frozen=True)
class TidalState:
    """Change times (last hour), when the target became cheaper, the target being moved to,
    the forecasts waiting to be scored and the scored (forecast, observed level, peak)."""

    changes: tuple[float, ...] = ()
    cheaper_since: float | None = None
    target: Plan | None = None
    log: tuple[tuple[float, float, float], ...] = ()  # (t, forecast, observed level)
    scored: tuple[tuple[float, float, float], ...] = ()  # (forecast, observed level, peak)
    bridged: bool = False  # the plan in force is an in-place bridge over a cold start
    start: float | None = None  # the first decision's time (the change budget's clock)
    urgent_at: float | None = None  # the last urgent change's time
    idle: bool = False  # the plan in force is the shrink of a stop of arrivals


__all__ = ["TidalState"]
