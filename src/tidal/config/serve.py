"""The serving config: one YAML file for `tidal serve` (models, pipelines, SLO, plan, HTTP).

Validated with pydantic; `load_serve_config(path)` raises TidalError naming the field and the
bad value. A single model is a one-stage pipeline whose stage is named after the model.
Stage names are global (the Plan addresses stages by name), so they must be unique across all
served models and pipelines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tidal.config.limits import LimitsConfig
from tidal.core.errors import TidalError, first_error
from tidal.core.plan import Plan, StagePlan, VariantWeight

MIN_TOKEN_CHARS = 16


class ModelConfig(BaseModel):
    """A model served alone under `name` (a one-stage pipeline with stage `name`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$", description="Model name.")
    variants: list[str] = Field(min_length=1, description="Catalog variants that may serve it.")


class StageConfig(BaseModel):
    """One stage of a pipeline."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    variants: list[str] = Field(min_length=1)


class PipelineConfig(BaseModel):
    """A linear pipeline served under its own model name `name`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    stages: list[StageConfig] = Field(min_length=1)


class ServeConfig(BaseModel):
    """Everything `tidal serve` needs."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="Bind address (loopback by default).")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0 = any free port).")
    grpc_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="OIP v2 gRPC port; None: 8001, or any free port when `port` is 0 (tests).",
    )
    grpc: bool = Field(default=True, description="Serve OIP v2 gRPC (grpc_port) next to REST.")
    token: str | None = Field(
        default=None,
        min_length=MIN_TOKEN_CHARS,
        description="Bearer token for /admin/* and /dashboard (>= 16 characters); env "
        "TIDAL_TOKEN when unset. No token: admin endpoints refuse every call.",
    )
    tls_certfile: str | None = Field(
        default=None, description="TLS certificate (PEM) for HTTPS; uvicorn's ssl_certfile."
    )
    tls_keyfile: str | None = Field(
        default=None, description="TLS private key (PEM); required with tls_certfile."
    )
    limits: LimitsConfig = Field(
        default_factory=LimitsConfig,
        description="Plan, queue and watchdog bounds (tidal.config.limits).",
    )
    frontends: int = Field(
        default=1,
        ge=1,
        le=64,
        description="HTTP front-end processes (tidal.dataplane.frontend). 1: HTTP is served in "
        "the scheduler process. N > 1: N processes parse HTTP on the same port (SO_REUSEPORT) "
        "and forward requests to the one scheduler process (EDF queues and admission stay "
        "global per stage). REST only: gRPC is served by the scheduler process either way.",
    )
    default_slo_ms: float = Field(default=200.0, gt=0, le=600_000)
    max_slo_ms: float = Field(default=600_000.0, gt=0, description="slo_ms above this is a 400.")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="413 above this.")
    serve_late: bool = Field(
        default=False,
        description="True: never refuse or expire; late answers count as `late` violations.",
    )
    admission_margin: float = Field(
        default=1.0, gt=0, le=10, description="Predicted latencies are multiplied by this."
    )
    max_retries: int = Field(default=2, ge=0, le=10, description="Retries after a worker dies.")
    profile: str | None = Field(
        default=None,
        description="Profile JSON (ProfileSet); default: the reference profile, else calibrate "
        "each variant on its first replica.",
    )
    models: list[ModelConfig] = Field(default_factory=list)
    pipelines: list[PipelineConfig] = Field(default_factory=list)
    plan: Plan | None = Field(
        default=None, description="Initial plan; default 1 replica x 1 core x batch 8 per stage."
    )

    model_repository: str | None = Field(
        default=None,
        description="Model repository folder (Triton layout: <model>/<version>/model.onnx); "
        "its models are served next to `models`/`pipelines` (tidal.models.resolve).",
    )
    auto_profile: bool = Field(
        default=True,
        description="Profile each repository version with no cached profile on first load.",
    )
    auto_profile_budget_s: float = Field(
        default=60.0, gt=0, le=3600, description="Time bound of one version's quick profile."
    )

    @model_validator(mode="after")
    def _check(self) -> ServeConfig:
        # Variant names and inputs are checked by tidal.models.resolve (config imports only
        # core): `resolve_serve_config` is called wherever a config is served.
        if not self.models and not self.pipelines and not self.model_repository:
            raise ValueError("no models, no pipelines and no model_repository: nothing to serve")
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError(
                f"tls_certfile ({self.tls_certfile!r}) and tls_keyfile ({self.tls_keyfile!r}) "
                "must be given together"
            )
        names = [m.name for m in self.models] + [p.name for p in self.pipelines]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate model/pipeline names {dup}")
        stages = self.stages()
        snames = [s for s, _ in stages]
        dup = sorted({n for n in snames if snames.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate stage names {dup} (stage names are global)")
        if self.plan is not None and not self.model_repository:
            self.check_plan()  # with a repository: once its models are known (resolve)
        return self

    def check_plan(self) -> None:
        """The plan names known stages and their allowed variants; ValueError naming them."""
        stages = self.stages()
        snames = [s for s, _ in stages]
        if self.plan is not None:
            known = dict(stages)
            for k, sp in enumerate(self.plan.stages):
                if sp.stage not in known:
                    raise ValueError(
                        f"plan.stages[{k}].stage: unknown stage {sp.stage!r}; stages: {snames}"
                    )
                for vw in sp.variants:
                    if vw.name not in known[sp.stage]:
                        raise ValueError(
                            f"plan.stages[{k}].variants: stage {sp.stage!r} cannot run variant "
                            f"{vw.name!r}; allowed: {known[sp.stage]}"
                        )

    def stages(self) -> list[tuple[str, list[str]]]:
        """(stage name, allowed variants) for every stage of every model and pipeline."""
        out = [(m.name, list(m.variants)) for m in self.models]
        for p in self.pipelines:
            out += [(s.name, list(s.variants)) for s in p.stages]
        return out

    def routes(self) -> dict[str, list[str]]:
        """Model name -> its stage names in order."""
        out = {m.name: [m.name] for m in self.models}
        out.update({p.name: [s.name for s in p.stages] for p in self.pipelines})
        return out

    def initial_plan(self) -> Plan:
        """The configured plan, completed with 1 replica x 1 core x batch 8 of the first variant
        for every stage the plan does not name."""
        given = {s.stage: s for s in self.plan.stages} if self.plan else {}
        out = []
        for stage, variants in self.stages():
            out.append(
                given.get(stage)
                or StagePlan(
                    stage=stage,
                    variants=(VariantWeight(name=variants[0]),),
                    replicas=1,
                    cores=1.0,
                    batch=8,
                )
            )
        return Plan(stages=tuple(out))

    def admin_token(self) -> str | None:
        """The admin bearer token: the config's, else env TIDAL_TOKEN, else None (refuse all).
        TidalError when TIDAL_TOKEN is shorter than 16 characters."""
        tok = self.token or os.environ.get("TIDAL_TOKEN") or None
        if tok is not None and len(tok) < MIN_TOKEN_CHARS:
            raise TidalError(
                f"TIDAL_TOKEN must have at least {MIN_TOKEN_CHARS} characters, got {len(tok)}"
            )
        return tok


def parse_serve_config(raw: Any, source: str = "config") -> ServeConfig:
    """Validate a parsed YAML/JSON object; TidalError naming the field and value."""
    if not isinstance(raw, dict):
        raise TidalError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
    try:
        return ServeConfig.model_validate(raw)
    except ValidationError as e:
        raise TidalError(f"{source}: {first_error(e)}") from None


def load_serve_config(path: str | Path) -> ServeConfig:
    """Read and validate a serving YAML file; TidalError naming the file, field and value."""
    p = Path(path)
    if not p.is_file():
        raise TidalError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise TidalError(f"config file {p} is not valid YAML: {e}") from None
    return parse_serve_config(raw, str(p))
