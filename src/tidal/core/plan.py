"""Plans: what a planner decides and an actuator applies.

A Plan gives, for each stage of a pipeline, the variants with their traffic weights, the
number of replicas, the cores per replica (fractional allowed: cgroup CPU quota) and the
maximum batch size. Plans are immutable values, validated at construction, and
JSON-serializable (they cross `PUT /admin/plan`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class VariantWeight(BaseModel):
    """A variant served by a stage and its share of the stage's traffic (weights sum to 1)."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1)
    weight: float = Field(default=1.0, ge=0.0, le=1.0)
    replicas: int | None = Field(
        default=None,
        ge=0,
        description="Replicas of this variant; None means the stage's `replicas` for a single "
        "variant. Multi-variant stages (InfAdapter) set it per variant.",
    )
    cores: float | None = Field(
        default=None, gt=0, description="Cores per replica of this variant; None = stage cores."
    )


class StagePlan(BaseModel):
    """The allocation of one pipeline stage."""

    model_config = ConfigDict(frozen=True)

    stage: str = Field(min_length=1)
    variants: tuple[VariantWeight, ...] = Field(min_length=1)
    replicas: int = Field(ge=0, description="Replicas per variant unless a variant overrides it.")
    cores: float = Field(gt=0, le=1024, description="Cores per replica (fractional allowed).")
    batch: int = Field(ge=1, le=1024, description="Maximum batch size.")

    @model_validator(mode="after")
    def _weights_sum_to_one(self) -> StagePlan:
        total = sum(v.weight for v in self.variants)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"stage {self.stage!r}: variant weights must sum to 1, got {total:.6f}"
            )
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"stage {self.stage!r}: duplicate variants {names}")
        return self

    def replicas_of(self, variant: str) -> int:
        """Replicas of `variant` in this stage (0 if the variant is not in the plan)."""
        for v in self.variants:
            if v.name == variant:
                return self.replicas if v.replicas is None else v.replicas
        return 0

    def cores_of(self, variant: str) -> float:
        """Cores per replica of `variant`."""
        for v in self.variants:
            if v.name == variant and v.cores is not None:
                return v.cores
        return self.cores

    @property
    def total_cores(self) -> float:
        """Cores allocated to the whole stage: sum over variants of replicas x cores."""
        return sum(self.replicas_of(v.name) * self.cores_of(v.name) for v in self.variants)

    @property
    def total_replicas(self) -> int:
        return sum(self.replicas_of(v.name) for v in self.variants)


class Plan(BaseModel):
    """A whole-pipeline plan. `feasible=False` marks a best-effort plan with its `reason`."""

    model_config = ConfigDict(frozen=True)

    stages: tuple[StagePlan, ...] = Field(min_length=1)
    feasible: bool = True
    reason: str = ""

    @model_validator(mode="after")
    def _unique_stages(self) -> Plan:
        names = [s.stage for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate stages in plan: {names}")
        return self

    def stage(self, name: str) -> StagePlan:
        """The StagePlan named `name`; KeyError naming the valid stages otherwise."""
        for s in self.stages:
            if s.stage == name:
                return s
        raise KeyError(f"unknown stage {name!r}; plan has {[s.stage for s in self.stages]}")

    @property
    def total_cores(self) -> float:
        return sum(s.total_cores for s in self.stages)

    @staticmethod
    def single(stage: str, variant: str, replicas: int, cores: float, batch: int) -> Plan:
        """Convenience constructor: one stage, one variant."""
        return Plan(
            stages=(
                StagePlan(
                    stage=stage,
                    variants=(VariantWeight(name=variant),),
                    replicas=replicas,
                    cores=cores,
                    batch=batch,
                ),
            )
        )
