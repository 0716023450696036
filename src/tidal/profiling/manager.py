"""The repository manager: what a serving gateway knows about its model repository.

Contract (used duck-typed by the protocol layer as `gateway.repository`):

    mgr = RepositoryManager(gateway, repo, cache=ProfileCache(), budget_s=60)
    mgr.prime()                    # before gateway.start(): cached fits or ESTIMATE per version
    mgr.start_profiling()          # on the gateway's loop: quick-profile unprofiled versions
    mgr.index(ready_only=False)    # [{"name", "version", "state", "reason"}] (OIP repository)
    await mgr.load("clf")          # re-read REPO/clf from disk, serve it (or reload it)
    await mgr.unload("clf")        # stop serving it: in-flight requests finish, new ones 503
    mgr.version_variant("clf", "2")  # -> "clf/2" (None: unknown version)
    mgr.metadata("clf")            # {"platform", "versions", "profiles": {"1": "measured"...}}
    mgr.estimated()                # variants still on the conservative estimate
    mgr.collector()                # Prometheus: tidal_variant_profile_estimated{...}

States: READY (served), LOADING, UNLOADING, UNAVAILABLE (not loaded, or its folder has a
problem: `reason` names it). `load` raises KeyError for a folder that does not exist and
TidalError for a model with a problem (the rest keeps serving). Load and unload need the
gateway's `add_model(name, stages, plan)` / `remove_model(name)`.

Profiles: a version whose ONNX bytes were profiled on this kind of machine (cache hit) serves
with that profile at once; any other one serves with `auto.ESTIMATE` (flagged) while a quick
profile runs in a thread, one version at a time; when it lands, the stage's fit is replaced
and `listeners` are called (the CLI refreshes the controller's candidates there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tidal.core.errors import TidalError
from tidal.core.plan import Plan, StagePlan, VariantWeight
from tidal.core.profile import ProfileSet, VariantProfile
from tidal.models.catalog import get_variant
from tidal.models.repository import RepoModel, Repository, scan_model
from tidal.profiling.auto import ESTIMATE, estimated_profile, quick_profile
from tidal.profiling.cache import CacheEntry, ProfileCache, cache_key
from tidal.profiling.machine import cpu_model

log = logging.getLogger("tidal.profiling")
READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"


class RepositoryManager:
    """See the module docstring."""

    def __init__(
        self,
        gateway: Any,
        repo: Repository,
        *,
        cache: ProfileCache | None = None,
        auto_profile: bool = True,
        budget_s: float = 60.0,
    ) -> None:
        self.gateway = gateway
        self.repo = repo
        self.cache = cache or ProfileCache()
        self.auto_profile = auto_profile
        self.budget_s = budget_s
        self.state: dict[str, tuple[str, str]] = {}
        self.loaded: dict[str, RepoModel] = {}
        self.profiles: dict[str, VariantProfile] = {}  # measured (cache or quick profile)
        self.profile_kind: dict[str, str] = {}  # variant -> "full" | "quick"
        self.profiling_s: dict[str, float] = {}  # variant -> seconds its quick profile took
        self.failed: dict[str, str] = {}  # variant -> why its quick profile failed
        self.listeners: list[Callable[[], None]] = []
        self._queue: asyncio.Queue[str] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        for p in repo.problems:
            log.warning("model repository: %s", p.message)
        served = set(getattr(gateway, "routes", {}) or {})
        for name, m in repo.models.items():
            if name in served:
                self.loaded[name] = m
                self.state[name] = (READY, "")
            else:
                self.state[name] = (UNAVAILABLE, "not loaded")

    # ------------------------------------------------------------------ profiles
    def _stages_of(self, variant: str) -> Iterator[Any]:
        for st in getattr(self.gateway, "stages", {}).values():
            if variant in st.allowed:
                yield st

    def _set_fit(self, variant: str, prof: VariantProfile | None) -> None:
        for st in self._stages_of(variant):
            st.fits[variant] = prof.fit if prof is not None else ESTIMATE

    def _prime_model(self, m: RepoModel) -> list[str]:
        """Cached profiles (or the estimate) for every version of `m`; returns the versions
        still to profile."""
        todo = []
        for v in m.versions:
            entry = self.cache.get(v.sha256)
            if entry is not None:
                prof = entry.profile.model_copy(update={"name": v.variant})
                spec = get_variant(v.variant)
                prof = prof.model_copy(update={"accuracy": spec.accuracy})
                self.profiles[v.variant] = prof
                self.profile_kind[v.variant] = entry.kind
                self._set_fit(v.variant, prof)
                log.info("model %s version %s: %s profile from the cache", m.name, v.version,
                         entry.kind)  # fmt: skip
            else:
                self._set_fit(v.variant, None)
                todo.append(v.variant)
        return todo

    def prime(self) -> list[str]:
        """Set every served version's fit (cached profile, else ESTIMATE) on the gateway's
        stages; call before `gateway.start()`. Returns the versions to profile."""
        todo: list[str] = []
        for m in self.loaded.values():
            todo += self._prime_model(m)
        self._todo = todo
        return todo

    def start_profiling(self) -> None:
        """Start the background quick-profile loop on the running event loop."""
        if not self.auto_profile:
            return
        self._queue = asyncio.Queue()
        for v in getattr(self, "_todo", []):
            self._queue.put_nowait(v)
        self._worker = asyncio.get_running_loop().create_task(self._profile_loop())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker
            self._worker = None

    async def _profile_loop(self) -> None:
        assert self._queue is not None
        while True:
            variant = await self._queue.get()
            sha = self._sha(variant)
            if variant in self.profiles or sha is None:
                continue  # measured already, or unloaded meanwhile
            log.warning("auto-profile %s: starting (bound %g s)", variant, self.budget_s)
            try:
                # Default CPU weight: the profiler's high weight (tidal profile) would starve
                # the serving workers on a contended machine for up to the whole budget.
                res = await asyncio.to_thread(
                    quick_profile, variant, self.budget_s, cpu_weight=None
                )
            except Exception as e:  # a failed profile keeps the estimate; serving goes on
                self.failed[variant] = str(e)
                log.warning("auto-profile %s failed: %s; keeps the conservative estimate",
                            variant, e)  # fmt: skip
                continue
            key = cache_key(sha)
            self.cache.put(
                CacheEntry(
                    onnx_sha256=sha, cpu_model=key.cpu_model, cores=key.cores, kind="quick",
                    measured_s=res.seconds, profile=res.profile,
                    created=datetime.now(UTC).isoformat(timespec="seconds"),
                )
            )  # fmt: skip
            log.warning(
                "auto-profile %s: done in %.1f s (%d points): l(b,c) = %.3g*b/c + %.3g*b + "
                "%.3g/c + %.3g ms", variant, res.seconds, res.points, res.profile.fit.gamma,
                res.profile.fit.delta, res.profile.fit.epsilon, res.profile.fit.eta,
            )  # fmt: skip
            if self._sha(variant) != sha:  # unloaded or replaced by other bytes meanwhile
                log.warning("auto-profile %s: the version changed meanwhile; cached only", variant)
                continue
            self.profiles[variant] = res.profile
            self.profile_kind[variant] = "quick"
            self.profiling_s[variant] = res.seconds
            self._set_fit(variant, res.profile)
            self._notify()

    def _sha(self, variant: str) -> str | None:
        """The ONNX hash of the served version `variant`, None when it is not served."""
        for m in self.loaded.values():
            for v in m.versions:
                if v.variant == variant:
                    return v.sha256
        return None

    def estimated(self) -> list[str]:
        """Served versions still on the conservative estimate."""
        return [v for m in self.loaded.values() for v in m.variants() if v not in self.profiles]

    def profile_set(self) -> ProfileSet:
        """Measured profiles and, for the rest, the flagged estimates (for the planners)."""
        out: dict[str, VariantProfile] = {}
        for m in self.loaded.values():
            for v in m.variants():
                out[v] = self.profiles.get(v) or estimated_profile(get_variant(v))
        return ProfileSet(source="repository", machine={"cpu_model": cpu_model(),
                          "cores": len(os.sched_getaffinity(0))}, variants=out)  # fmt: skip

    # ------------------------------------------------------------------ repository API
    def _folder(self, name: str) -> str:
        if name in self.repo.folders:
            return self.repo.folders[name]
        if (self.repo.root / name).is_dir():
            return name
        raise KeyError(f"unknown model {name!r}: no folder {self.repo.root / name}")

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model of the repository folder (re-listed from disk) with its state."""
        names = set(self.state)
        for sub in sorted(self.repo.root.iterdir()):
            if sub.is_dir() and not sub.name.startswith(".") and sub.name not in names:
                known = {f for f in self.repo.folders.values()}
                if sub.name not in known:
                    names.add(sub.name)
        out = []
        for name in sorted(names):
            state, reason = self.state.get(name, (UNAVAILABLE, "not loaded"))
            if ready_only and state != READY:
                continue
            m = self.loaded.get(name)
            if m is not None:
                out += [{"name": name, "version": str(v.version), "state": state,
                         "reason": reason} for v in m.versions]  # fmt: skip
            else:
                out.append({"name": name, "version": "", "state": state, "reason": reason})
        return out

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def load(self, name: str) -> None:
        """(Re)load model `name` from its folder while serving. KeyError: no such folder;
        TidalError: the folder has a problem (state UNAVAILABLE with the reason)."""
        folder = self._folder(name)
        async with self._lock(name):
            try:
                m = await asyncio.to_thread(scan_model, self.repo.root, folder)
            except TidalError as e:
                if name not in self.loaded:
                    self.state[name] = (UNAVAILABLE, str(e))
                raise
            old = self.loaded.get(name)
            if old is not None:
                before = {(v.version, v.sha256) for v in old.versions}
                after = {(v.version, v.sha256) for v in m.versions}
                if before == after:
                    return  # same bytes: nothing to do (Triton's load of a loaded model)
                if before < after and old.inputs == m.inputs and name in self.gateway.routes:
                    self._add_versions(name, m)  # only new versions: no interruption
                    return
                await self._unload_locked(name)
            self.state[name] = (LOADING, "")
            m.register()
            self.repo.models[name] = m
            self.repo.folders[name] = folder
            first = m.versions[0].variant
            plan = Plan(
                stages=(
                    StagePlan(stage=name, variants=(VariantWeight(name=first),), replicas=1,
                              cores=1.0, batch=min(8, m.max_batch_size)),
                )
            )  # fmt: skip
            try:
                await self.gateway.add_model(name, [(name, m.variants())], plan)
            except Exception as e:
                m.unregister()
                self.state[name] = (UNAVAILABLE, f"load failed: {e}")
                raise TidalError(f"model {name!r}: load failed: {e}") from None
            self.loaded[name] = m
            todo = self._prime_model(m)
            self.state[name] = (READY, "")
            log.warning("model repository: loaded %s versions %s", name,
                        [v.version for v in m.versions])  # fmt: skip
            if self._queue is not None:
                for v in todo:
                    self._queue.put_nowait(v)
            self._notify()

    def _add_versions(self, name: str, m: RepoModel) -> None:
        """Serve the new versions of loaded model `name` next to the old ones (no restart,
        no interruption: the planners may now choose them)."""
        m.register()
        self.repo.models[name] = m
        old = set(self.loaded[name].variants())
        new = [v for v in m.variants() if v not in old]
        self.gateway.add_variants(name, new, {v: ESTIMATE for v in new})
        self.loaded[name] = m
        todo = self._prime_model(m)
        if self._queue is not None:
            for v in todo:
                self._queue.put_nowait(v)
        log.warning("model repository: %s gains versions %s (served on, no interruption)",
                    name, new)  # fmt: skip
        self._notify()

    async def unload(self, name: str) -> None:
        """Stop serving `name`: new requests get 503, in-flight ones finish. KeyError when it
        is not in the repository; unloading a model that is not loaded is a no-op."""
        if name not in self.state and not (self.repo.root / name).is_dir():
            raise KeyError(f"unknown model {name!r}")
        async with self._lock(name):
            await self._unload_locked(name)
        self._notify()

    async def _unload_locked(self, name: str) -> None:
        m = self.loaded.get(name)
        if m is None:
            self.state[name] = (UNAVAILABLE, "not loaded")
            return
        self.state[name] = (UNLOADING, "")
        try:
            await self.gateway.remove_model(name)
        finally:
            self.loaded.pop(name, None)
            m.unregister()
            for v in m.variants():
                self.profiles.pop(v, None)
            self.state[name] = (UNAVAILABLE, "unloaded")
            log.warning("model repository: unloaded %s", name)

    def _notify(self) -> None:
        for fn in list(self.listeners):
            try:
                fn()
            except Exception:
                log.exception("repository listener failed")

    # ------------------------------------------------------------------ per model
    def version_variant(self, model: str, version: str) -> str | None:
        """The variant serving `version` of a loaded repository model, else None."""
        m = self.loaded.get(model)
        return m.version_variants().get(version) if m is not None else None

    def metadata(self, model: str) -> dict[str, Any]:
        """Extra model metadata: platform, versions, and per version whether its latency is
        measured or a conservative estimate (and whether a profile is running)."""
        m = self.loaded.get(model)
        if m is None:
            return {}
        prof = {}
        for v in m.versions:
            if v.variant in self.profiles:
                prof[str(v.version)] = f"measured ({self.profile_kind.get(v.variant, 'quick')})"
            else:
                prof[str(v.version)] = "estimated"
        return {
            "platform": "onnxruntime_onnx",
            "versions": [str(v.version) for v in m.versions],
            "profiles": prof,
            "accuracy": {str(v.version): v.accuracy for v in m.versions},
        }

    def collector(self) -> Collector:
        """Prometheus gauges: 1 while a version serves with the conservative estimate."""
        mgr = self

        class _C(Collector):
            def collect(self) -> Iterator[GaugeMetricFamily]:
                g = GaugeMetricFamily(
                    "tidal_variant_profile_estimated",
                    "1 while the version serves with a conservative latency estimate "
                    "(not profiled on this machine yet), 0 once measured",
                    labels=["model", "version", "variant"],
                )
                for m in mgr.loaded.values():
                    for v in m.versions:
                        g.add_metric([m.name, str(v.version), v.variant],
                                     0.0 if v.variant in mgr.profiles else 1.0)  # fmt: skip
                yield g

        return _C()


__all__ = ["LOADING", "READY", "UNAVAILABLE", "UNLOADING", "RepositoryManager"]
