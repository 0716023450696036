"""Resolve a ServeConfig against the catalog and the model repository (config imports only core,
so the checks that need the models live here).

Contract: `resolve_serve_config(cfg)` returns `(config, repository)`:
- with `cfg.model_repository` set, the repository is scanned (`scan_repository`), every
  servable model's versions are registered as catalog variants "<model>/<version>", each model
  is added as a served model (unless the YAML already defines that name: a problem), and each
  `pipeline:` membership becomes a pipeline whose stages are named "<pipeline>.<model>";
- a YAML model or pipeline stage whose `variants` names a repository model is expanded to that
  model's versions (`variants: [clf]` -> `["clf/1", "clf/2"]`);
- every variant must exist and every stage's variants must take the same inputs: TidalError
  naming the field and the value otherwise. Repository problems (bad folders) do not fail the
  call: they are in `repository.problems` for the caller to log; the rest is served.
"""

from __future__ import annotations

from typing import Any

from tidal.config.serve import ServeConfig
from tidal.core.errors import TidalError
from tidal.models.catalog import get_variant, variant_names
from tidal.models.repository import Repository, scan_repository


def _expand(variants: list[str], repo: Repository | None) -> list[str]:
    out: list[str] = []
    for v in variants:
        if repo is not None and v in repo.models:
            out += repo.models[v].variants()
        else:
            out.append(v)
    return out


def check_variants(cfg: ServeConfig) -> None:
    """Every stage's variants exist and take the same inputs; TidalError naming the field."""
    fields = [f"models[{i}].variants" for i in range(len(cfg.models))]
    fields += [
        f"pipelines[{i}].stages[{j}].variants"
        for i, p in enumerate(cfg.pipelines)
        for j in range(len(p.stages))
    ]
    for field_name, (stage, variants) in zip(fields, cfg.stages(), strict=False):
        specs = []
        for v in variants:
            try:
                specs.append(get_variant(v))
            except TidalError as e:
                raise TidalError(f"{field_name}: {e}") from None
        shapes = {(s.input_shape, s.input.dtype, s.inputs) for s in specs}
        if len(shapes) > 1:
            raise TidalError(
                f"{field_name}: variants {variants} of stage {stage!r} take different inputs"
            )


def resolve_serve_config(cfg: ServeConfig) -> tuple[ServeConfig, Repository | None]:
    """See the module docstring."""
    repo: Repository | None = None
    if cfg.model_repository:
        own = {m.name for m in cfg.models} | {p.name for p in cfg.pipelines}
        repo = scan_repository(cfg.model_repository, reserved=own | set(variant_names()))
        repo.register()
    raw: dict[str, Any] = cfg.model_dump(mode="python")
    for m in raw["models"]:
        m["variants"] = _expand(m["variants"], repo)
    for p in raw["pipelines"]:
        for s in p["stages"]:
            s["variants"] = _expand(s["variants"], repo)
    if repo is not None:
        for name, model in repo.models.items():
            raw["models"].append({"name": name, "variants": model.variants()})
        taken = {m["name"] for m in raw["models"]} | {p["name"] for p in raw["pipelines"]}
        for pname, members in repo.pipelines().items():
            if pname in taken:
                raise TidalError(
                    f"{cfg.model_repository}: pipeline {pname!r} (from the models' pipeline: "
                    "keys) clashes with a model or pipeline of the same name"
                )
            raw["pipelines"].append(
                {
                    "name": pname,
                    "stages": [
                        {"name": f"{pname}.{m}", "variants": repo.models[m].variants()}
                        for m in members
                    ],
                }
            )
    if not raw["models"] and not raw["pipelines"]:
        where = f" (repository {cfg.model_repository}: no servable model)" if repo else ""
        raise TidalError(f"nothing to serve{where}")
    try:
        out = ServeConfig.model_validate(raw)
    except Exception as e:  # pydantic ValidationError: same wording as load_serve_config
        from tidal.core.errors import first_error

        raise TidalError(f"config: {first_error(e)}") from None  # type: ignore[arg-type]
    try:
        out.check_plan()
    except ValueError as e:
        raise TidalError(f"config: {e}") from None
    check_variants(out)
    return out, repo


__all__ = ["check_variants", "resolve_serve_config"]
