"""The Planner protocol, its input (PlanContext) and the registry of policies by name.

Contract: a planner is a pure function of its context. ``plan(ctx) -> (Plan, new_state)``;
no I/O, no clock reads, no randomness except from ``ctx``. The same code drives the live
controller, the Ray substrate and the simulator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from tidal.core.capacity import Capacity, Pending
from tidal.core.errors import TidalError, first_error
from tidal.core.plan import Plan
from tidal.core.profile import VariantProfile


@dataclass(frozen=True)
class StageCandidates:
    """A stage and the variants it may run, with their profiles (smallest/fastest first)."""

    stage: str
    variants: tuple[VariantProfile, ...]


@dataclass(frozen=True)
class StageObservation:
    """What the monitor saw on one stage over the planner's metric window.

    `cpu_utilization` is busy time / allocated core-time in [0, 1+] (HPA, VPA input);
    `ongoing` is the mean number of requests queued or in flight per replica (Ray Serve input);
    `cpu_usage_cores` is the mean cores actually used by the whole stage (all replicas; VPA
    divides by the replica count for its per-replica histogram sample);
    `usage_samples` (optional) are per-second samples of that stage-wide usage since the last
    decision; VPA adds each one to its histogram (it falls back to `cpu_usage_cores`).
    """

    stage: str
    arrival_rate: float = 0.0
    queue_len: int = 0
    ongoing: float = 0.0
    cpu_utilization: float = 0.0
    cpu_usage_cores: float = 0.0
    p99_ms: float = 0.0
    usage_samples: tuple[float, ...] = ()


@dataclass(frozen=True)
class PlanContext:
    """Everything a planner may look at.

    - `now`: clock seconds. `rate_history`: observed arrival rate (req/s) of the pipeline's
      entry, one value per second, oldest first.
    - `forecast`: predicted rate (req/s) for the planner's horizon, or None (use history).
    - `stages`: candidate variants per stage, in pipeline order.
    - `current`: the plan in force (None before the first decision); `pending`: what is still
      changing.
    - `slo_ms`: end-to-end SLO; `budgets_ms`: remaining budgets (ms) of the requests queued at
      the entry stage, in EDF order (Sponge's dynamic SLOs).
    - `observations`: per-stage metrics; `capacity`: nodes x cores; `state`: planner's own.
    """

    now: float
    rate_history: tuple[float, ...]
    forecast: float | None
    stages: tuple[StageCandidates, ...]
    current: Plan | None
    slo_ms: float
    capacity: Capacity = Capacity()
    pending: Pending = Pending()
    budgets_ms: tuple[float, ...] = ()
    observations: tuple[StageObservation, ...] = ()
    state: Any = None

    @property
    def load(self) -> float:
        """The rate to plan for: the forecast if given, else the last observed rate, else 0."""
        if self.forecast is not None:
            return max(0.0, self.forecast)
        return self.observed

    @property
    def observed(self) -> float:
        """The last second's observed arrival rate (req/s), whatever the forecast says; 0
        without history. Planners that react to what is happening now (Themis' stage 1,
        `tidal`'s fast knobs) read this; `load` is the forecast when one is given."""
        return max(0.0, self.rate_history[-1]) if self.rate_history else 0.0

    def observed_mean(self, seconds: int) -> float:
        """Mean observed rate over the last `seconds` seconds (all history if shorter)."""
        if not self.rate_history:
            return 0.0
        tail = self.rate_history[-max(1, seconds) :]
        return max(0.0, sum(tail) / len(tail))


RESIZE_IN_PLACE = "in_place"
"""Cores per replica change in place (cgroup quota): no restart, no cold start."""
RESIZE_RECREATE = "recreate"
"""A change of cores per replica restarts the replica: it pays the variant's load_time_s."""


def resize_mode(planner: object) -> str:
    """How `planner`'s changes of cores per replica must be applied: RESIZE_IN_PLACE or
    RESIZE_RECREATE (VPA's Recreate mode). Planners without a `resize_mode` attribute resize
    in place. Substrates (simulator, live actuator) read this once per planner."""
    mode = getattr(planner, "resize_mode", RESIZE_IN_PLACE)
    return str(mode)


class Planner(Protocol):
    """A pure autoscaling policy."""

    name: str
    interval_s: float

    def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
        """Decide the plan for `ctx`. Never raises for infeasible inputs: returns a
        best-effort plan with ``feasible=False`` and a reason instead."""
        ...


class PlannerOptions(BaseModel):
    """Base of every planner's `Options` model (the anchor is Ray Serve's `AutoscalingConfig`:
    one pydantic model per policy, bounds on every field, a description per field).

    Unknown keys are rejected; `create` validates through the model, so a bad option is a
    TidalError naming the option, the value and the valid options.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    doc: ClassVar[str] = ""


VariantChoice = dict[str, str] | str | int | None
"""A fixed variant per stage: a stage->name map, a name or index for all stages, "low"
(smallest) / "high" (most accurate), or None (the first candidate)."""

_REGISTRY: dict[str, Callable[..., Planner]] = {}


def register(name: str) -> Callable[[Callable[..., Planner]], Callable[..., Planner]]:
    """Class/factory decorator adding a planner to the registry under `name`."""

    def deco(factory: Callable[..., Planner]) -> Callable[..., Planner]:
        if name in _REGISTRY:
            raise ValueError(f"planner {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return deco


def available() -> list[str]:
    """Names of all registered planners, sorted."""
    return sorted(_REGISTRY)


def options_model(name: str) -> type[PlannerOptions]:
    """The `Options` model of planner `name` (TidalError if the name is unknown)."""
    factory = _factory(name)
    model = getattr(factory, "Options", None)
    if not (isinstance(model, type) and issubclass(model, PlannerOptions)):
        raise TidalError(f"planner {name!r} declares no Options model")
    return model


def validate_options(name: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Validate `opts` through planner `name`'s Options model; the validated values of the
    keys given. TidalError naming the option and the valid ones otherwise."""
    model = options_model(name)
    valid = ", ".join(model.model_fields)
    for key in opts:
        if key not in model.model_fields:
            raise TidalError(f"{name}: unknown option {key!r}; valid options: {valid}")
    try:
        checked = model(**opts)
    except ValidationError as e:
        raise TidalError(
            f"{name}: invalid option {first_error(e)}; valid options: {valid}"
        ) from None
    return {k: getattr(checked, k) for k in opts}


def _factory(name: str) -> Callable[..., Planner]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TidalError(
            f"unknown policy {name!r}; valid policies: {', '.join(available())}"
        ) from None


def create(name: str, **opts: Any) -> Planner:
    """Instantiate the planner `name` with options validated by its `Options` model.
    TidalError listing the valid names if `name` is unknown, or naming the option and the
    valid ones if an option is unknown or out of bounds."""
    factory = _factory(name)
    return factory(**validate_options(name, opts))
