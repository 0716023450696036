"""Pipeline specs: linear chains of stages, each with candidate variants.

Loaded from YAML files under `examples/pipelines/` (see `PipelineSpec.load`).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from tidal.core.errors import TidalError, first_error


class StageSpec(BaseModel):
    """One stage: a task and the variants that may serve it (ordered, smallest first)."""

    name: str = Field(min_length=1)
    task: str = Field(min_length=1)
    variants: list[str] = Field(min_length=1)


class PipelineSpec(BaseModel):
    """A linear pipeline. A one-stage pipeline is a single model."""

    name: str = Field(min_length=1)
    stages: list[StageSpec] = Field(min_length=1)
    accuracy_combine: str = Field(default="product", pattern="^(sum|product)$")

    @model_validator(mode="after")
    def _unique(self) -> PipelineSpec:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate stage names {names}")
        return self

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise TidalError(
            f"unknown stage {name!r}; pipeline {self.name!r} has {[s.name for s in self.stages]}"
        )

    @classmethod
    def load(cls, path: str | Path) -> PipelineSpec:
        """Parse and validate a pipeline YAML file; TidalError names the field and value."""
        p = Path(path)
        if not p.is_file():
            raise TidalError(f"pipeline file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise TidalError(f"pipeline file {p} is not valid YAML: {e}") from None
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise TidalError(f"pipeline file {p}: {first_error(e)}") from None
