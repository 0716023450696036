"""Latency profiles: measured l(variant, batch, cores) and Sponge's fitted model.

Units: latencies in milliseconds, cores in (fractional) CPUs, throughput in requests/second.
Sponge's model (REFERENCE.md): ``l(b,c) = gamma*b/c + delta*b + epsilon/c + eta`` (ms).
A profile file is JSON (`ProfileSet`), versioned by `format_version`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from tidal.core.errors import TidalError, first_error

PROFILE_FORMAT_VERSION = 1


class LatencyFit(BaseModel):
    """Coefficients of l(b,c) = gamma*b/c + delta*b + epsilon/c + eta, in ms, and fit quality."""

    gamma: float
    delta: float
    epsilon: float
    eta: float
    r2: float = 1.0
    max_rel_residual: float = 0.0
    p99_ratio: float = Field(default=1.0, ge=1.0, description="Mean measured p99/p50.")

    def latency_ms(self, batch: int | float, cores: float) -> float:
        """Predicted p50 latency of one batch in ms. Raises ValueError for cores <= 0."""
        if cores <= 0:
            raise ValueError(f"cores must be > 0, got {cores}")
        return self.gamma * batch / cores + self.delta * batch + self.epsilon / cores + self.eta


class ProfilePoint(BaseModel):
    """One measured grid point."""

    batch: int = Field(ge=1)
    cores: float = Field(gt=0)
    p50_ms: float = Field(gt=0)
    p99_ms: float = Field(gt=0)
    samples: int = Field(default=0, ge=0)


class CapacityPoint(BaseModel):
    """A measured capacity: highest rps whose p99 stays within `sla_ms` (InfAdapter's table)."""

    cores: float = Field(gt=0)
    rps: float = Field(ge=0)
    sla_ms: float = Field(gt=0)


class VariantProfile(BaseModel):
    """Everything a planner or the simulator needs to know about one variant."""

    name: str
    task: str = "unknown"
    accuracy: float = Field(default=0.0, ge=0.0, le=1.0)
    accuracy_source: str = ""
    params: int = 0
    load_time_s: float = Field(default=1.0, ge=0.0, description="Cold start: spawn+load+warm-up.")
    resize_s: float = Field(default=0.01, ge=0.0, description="In-place resize to next batch.")
    points: list[ProfilePoint] = Field(default_factory=list)
    fit: LatencyFit
    capacity: list[CapacityPoint] = Field(default_factory=list)
    max_useful_cores: float | None = Field(
        default=None, description="Where the speed-up flattens (Amdahl cap); None = no cap."
    )
    cores_measured: tuple[float, float] | None = Field(
        default=None,
        description="(fewest, most) cores per replica measured; None: not recorded (older "
        "files, synthetic profiles). Planners stay inside it unless `extrapolate`.",
    )
    extrapolate: bool = Field(
        default=False, description="The fit may be used outside `cores_measured` (opt-in)."
    )

    @field_validator("cores_measured")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 < v[0] <= v[1]:
            raise ValueError(f"cores_measured must be 0 < fewest <= most, got {v}")
        return v

    def core_bounds(self) -> tuple[float, float] | None:
        """The cores per replica a planner may use: `cores_measured`, or None (no bound) when
        extrapolation is allowed or no range was recorded."""
        if self.extrapolate or self.cores_measured is None:
            return None
        return self.cores_measured

    def latency_ms(self, batch: int | float, cores: float) -> float:
        """Fitted p50 latency (ms) of a batch of `batch` on `cores` cores."""
        return self.fit.latency_ms(batch, cores)

    def p99_ms(self, batch: int | float, cores: float) -> float:
        """Fitted p99 latency (ms): p50 scaled by the measured mean p99/p50 ratio."""
        return self.fit.latency_ms(batch, cores) * self.fit.p99_ratio

    def throughput(self, batch: int, cores: float) -> float:
        """Requests/second of one replica running back-to-back batches: b / l(b,c)."""
        return batch * 1000.0 / self.fit.latency_ms(batch, cores)

    def measured(self, batch: int, cores: float) -> ProfilePoint | None:
        """The measured point at (batch, cores), or None."""
        for p in self.points:
            if p.batch == batch and math.isclose(p.cores, cores):
                return p
        return None


class ProfileSet(BaseModel):
    """A profile file: several variants measured on one machine (or imported)."""

    format_version: int = PROFILE_FORMAT_VERSION
    source: str = "measured"
    machine: dict[str, Any] = Field(default_factory=dict)
    created: str = ""
    variants: dict[str, VariantProfile] = Field(default_factory=dict)

    def get(self, name: str) -> VariantProfile:
        """The profile of `name`; TidalError listing the known variants otherwise."""
        try:
            return self.variants[name]
        except KeyError:
            raise TidalError(
                f"no profile for variant {name!r}; profile has {sorted(self.variants)}"
            ) from None

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ProfileSet:
        """Read a profile file; TidalError naming the path and the problem if corrupt."""
        p = Path(path)
        if not p.is_file():
            raise TidalError(f"profile file not found: {p}")
        try:
            raw = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TidalError(f"corrupt profile file {p}: {e}") from None
        if not isinstance(raw, dict):
            raise TidalError(f"corrupt profile file {p}: top level must be an object")
        version = raw.get("format_version")
        if version != PROFILE_FORMAT_VERSION:
            raise TidalError(
                f"profile file {p}: format_version {version!r} unsupported "
                f"(expected {PROFILE_FORMAT_VERSION})"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise TidalError(f"corrupt profile file {p}: {first_error(e)}") from None

    def merged(self, other: ProfileSet) -> ProfileSet:
        """A new set with `other`'s variants added (other wins on name clashes)."""
        return self.model_copy(update={"variants": {**self.variants, **other.variants}})
