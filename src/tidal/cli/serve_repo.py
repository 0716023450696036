"""`tidal serve`'s model-repository wiring: resolve the config, attach the repository manager
to the gateway, prime fits, start automatic profiling, keep the controller's candidates true.

    rs = RepoServing(cfg)          # resolve_serve_config: variants checked, repository scanned
    run(rs.config, on_build=rs.built, on_start=...)   # built(gw, app): gw.repository, /metrics
    rs.started(gw)                 # on the gateway's loop once warm: quick profiles start
    rs.policy_hook(hook)           # wraps the controller hook: profiles + flagged reasons

Without a repository every step is a no-op beyond `resolve_serve_config`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tidal.config.serve import ServeConfig, load_serve_config
from tidal.core.errors import TidalError
from tidal.core.profile import ProfileSet
from tidal.models.resolve import resolve_serve_config

log = logging.getLogger("tidal.serve")


def base_config(path: str | None, model_repository: str | None) -> ServeConfig:
    """The YAML's config (with `model_repository` overriding its own), or, with no YAML, the
    defaults serving `model_repository`. TidalError when neither is given."""
    if path is None:
        if model_repository is None:
            raise TidalError("give a serving config YAML or --model-repository DIR")
        return ServeConfig(model_repository=model_repository)
    cfg = load_serve_config(path)
    if model_repository is not None:
        cfg = ServeConfig.model_validate({**cfg.model_dump(), "model_repository": model_repository})
    return cfg


def _reference() -> ProfileSet:
    try:
        from tidal.profiling import load_reference

        return load_reference()
    except (ImportError, TidalError):
        return ProfileSet()


class RepoServing:
    """See the module docstring."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.config, self.repo = resolve_serve_config(cfg)
        self.manager: Any = None
        if self.repo is not None:
            # Automatic profiling reports one progress line per point, even without -v.
            logging.getLogger("tidal.profiling").setLevel(logging.INFO)
            for p in self.repo.problems:
                log.warning("model repository: %s", p.message)
            print(
                f"tidal: model repository {self.repo.root}: {len(self.repo.models)} model(s) "
                f"{sorted(self.repo.models)}, {len(self.repo.problems)} problem(s)"
            )
            for p in self.repo.problems:
                print(f"tidal: repository problem: {p.message}")

    def built(self, gateway: Any, app: Any) -> None:
        """Attach the manager (gateway.repository), prime the fits, export its metrics."""
        if self.repo is None:
            gateway.repository = None
            return
        from tidal.profiling.cache import ProfileCache
        from tidal.profiling.manager import RepositoryManager

        self.manager = RepositoryManager(
            gateway,
            self.repo,
            cache=ProfileCache(),
            auto_profile=self.config.auto_profile,
            budget_s=self.config.auto_profile_budget_s,
        )
        gateway.repository = self.manager
        todo = self.manager.prime()
        if todo:
            print(f"tidal: {len(todo)} version(s) not profiled on this machine yet {todo}: "
                  f"serving on a conservative estimate, quick profile <= "
                  f"{self.config.auto_profile_budget_s:g} s each")  # fmt: skip
        oip = getattr(app, "oip_app", app)
        registry = getattr(oip, "registry", None)
        if registry is not None:
            registry.register(self.manager.collector())

    def started(self, gateway: Any) -> None:
        if self.manager is not None:
            self.manager.start_profiling()

    def profiles(self) -> ProfileSet:
        """The reference profile plus the repository's measured/estimated profiles."""
        ref = _reference()
        return ref.merged(self.manager.profile_set()) if self.manager is not None else ref

    def policy_hook(self, hook: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """Wrap the controller hook: plan on the repository's profiles, flag estimates in the
        planner's reason, refresh the candidates when a profile lands or a model (un)loads."""
        if self.repo is None:
            return hook

        def wrapped(gw: Any) -> Any:
            from tidal.control import serve_hook
            from tidal.control.closedloop import stage_candidates
            from tidal.profiling.auto import FlagEstimates

            cl = serve_hook.loop_for(gw)
            if cl is not None:
                cl.options.profile = self.profiles()
            out = hook(gw)
            ctl = getattr(cl, "controller", None) if cl is not None else None
            if ctl is None or self.manager is None:
                return out
            mgr = self.manager
            ctl.planner = FlagEstimates(ctl.planner, mgr.estimated)

            def refresh() -> None:
                ctl.stages = stage_candidates(gw, self.profiles())

            mgr.listeners.append(refresh)
            return out

        return wrapped


__all__ = ["RepoServing", "base_config"]


def repository_inputs(root: str, pipeline: str | None, tmpdir: str) -> tuple[str, str, list[str]]:
    """For `tidal plan` / `tidal simulate --model-repository DIR`: write the repository's
    profiles (cached, else flagged estimates) and the PipelineSpec of `pipeline` (a repository
    model or pipeline; default: the only model) into `tmpdir`; (pipeline path, profile path,
    estimated variants)."""
    import os

    import yaml

    from tidal.profiling.repo_profiles import repository_pipeline, repository_profiles

    ps, repo = repository_profiles(root)
    for p in repo.problems:
        print(f"tidal: repository problem: {p.message}")
    if pipeline is None:
        if len(repo.models) != 1:
            raise TidalError(
                f"--model-repository {root}: give --pipeline MODEL (models: {sorted(repo.models)})"
            )
        pipeline = next(iter(repo.models))
    spec = repository_pipeline(repo, pipeline)
    ppath = os.path.join(tmpdir, "pipeline.yaml")
    with open(ppath, "w") as f:
        yaml.safe_dump(spec.model_dump(), f)
    profpath = os.path.join(tmpdir, "profiles.json")
    ps.save(profpath)
    est = list(ps.machine.get("estimated", []))
    if est:
        print(f"tidal: not profiled on this machine, planning on the conservative estimate: {est}"
              " (run `tidal profile REPO/<model>/<version>` or serve them once)")  # fmt: skip
    return ppath, profpath, est


def policy_options(pairs: list[str]) -> dict[str, Any]:
    """`--policy-option KEY=VALUE` pairs as planner options (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for p in pairs:
        key, sep, val = p.partition("=")
        if not sep or not key.strip():
            raise TidalError(f"--policy-option {p!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(val)
    return out
