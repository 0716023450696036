"""RepositoryManager on a real Gateway with an in-process executor (labelled fake: no worker
processes here; tests/integration/test_model_repository.py runs real ones): load and unload
while serving, in-flight requests finish, new ones get 503, a bad folder is UNAVAILABLE with
its reason while the rest serves, cached profiles vs the flagged estimate."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from repo_builders import tiny_model

from tidal.config.serve import parse_serve_config
from tidal.core.plan import Plan, StagePlan, VariantWeight
from tidal.core.profile import LatencyFit, VariantProfile
from tidal.dataplane.gateway import Gateway
from tidal.dataplane.replica import Refused
from tidal.models.resolve import resolve_serve_config
from tidal.profiling.auto import ESTIMATE, FlagEstimates
from tidal.profiling.cache import CacheEntry, ProfileCache, cache_key
from tidal.profiling.manager import RepositoryManager


class SlowFake:
    """FAKE executor (in process): doubles the input after `delay` seconds."""

    def __init__(self, variant: str, cores: float, delay: float = 0.05) -> None:
        self.variant, self.cores, self.delay = variant, cores, delay
        self.pid, self.cold_start_s = 1, 0.0

    async def infer_async(self, batch: np.ndarray) -> np.ndarray:
        await asyncio.sleep(self.delay)
        return np.asarray(batch, np.float32) * 2.0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(batch, np.float32) * 2.0

    def resize(self, cores: float) -> float:
        self.cores = cores
        return 0.0

    def stop(self) -> None:
        pass

    def alive(self) -> bool:
        return True


def _fits() -> dict[str, LatencyFit]:
    return {}


async def _serve(tmp_path: Path, cache: ProfileCache) -> tuple[Gateway, RepositoryManager]:
    cfg, repo = resolve_serve_config(
        parse_serve_config({"model_repository": str(tmp_path / "repo"), "default_slo_ms": 5000})
    )
    assert repo is not None
    gw = Gateway(cfg, factory=SlowFake, fits=_fits())
    mgr = RepositoryManager(gw, repo, cache=cache, auto_profile=False)
    gw.repository = mgr  # type: ignore[attr-defined]
    mgr.prime()
    await gw.start()
    return gw, mgr


def test_load_and_unload_while_serving(tmp_path: Path) -> None:
    tiny_model(tmp_path / "repo" / "a" / "1" / "model.onnx")

    async def main() -> None:
        gw, mgr = await _serve(tmp_path, ProfileCache(tmp_path / "cache"))
        try:
            assert [(e["name"], e["state"]) for e in mgr.index()] == [("a", "READY")]
            # a new folder appears: index lists it, load serves it without a restart
            tiny_model(tmp_path / "repo" / "b" / "1" / "model.onnx", n_out=2)
            assert ("b", "UNAVAILABLE") in [(e["name"], e["state"]) for e in mgr.index()]
            await mgr.load("b")
            x = np.ones((2, 4), np.float32)
            res = await gw.infer("b", x)
            assert res.variants == ["b/1"] and res.output.shape == (2, 4)
            assert mgr.version_variant("b", "1") == "b/1" and mgr.version_variant("b", "9") is None
            # unload a while requests run: those in flight finish, later ones are refused
            inflight = [asyncio.create_task(gw.infer("a", x)) for _ in range(5)]
            await asyncio.sleep(0.01)
            unload = asyncio.create_task(mgr.unload("a"))
            await asyncio.sleep(0.005)
            with pytest.raises(Refused) as e:
                await gw.infer("a", x)
            assert e.value.status == 503 and "being unloaded" in e.value.reason
            done = await asyncio.gather(*inflight)
            assert all(r.variants == ["a/1"] for r in done)
            await unload
            with pytest.raises(KeyError):
                await gw.infer("a", x)
            assert "a" not in gw.stages and "b" in gw.stages
            states = {e["name"]: (e["state"], e["reason"]) for e in mgr.index()}
            assert states == {"a": ("UNAVAILABLE", "unloaded"), "b": ("READY", "")}
            assert (await gw.infer("b", x)).variants == ["b/1"]  # b kept serving
            await mgr.load("a")  # and back
            assert (await gw.infer("a", x)).variants == ["a/1"]
        finally:
            await gw.stop()

    asyncio.run(main())


def test_bad_folder_load_names_the_problem_and_the_rest_serves(tmp_path: Path) -> None:
    tiny_model(tmp_path / "repo" / "a" / "1" / "model.onnx")

    async def main() -> None:
        gw, mgr = await _serve(tmp_path, ProfileCache(tmp_path / "cache"))
        try:
            bad = tmp_path / "repo" / "bad" / "1"
            bad.mkdir(parents=True)
            (bad / "model.onnx").write_bytes(b"garbage")
            with pytest.raises(Exception, match="the ONNX file fails to load"):
                await mgr.load("bad")
            states = {e["name"]: (e["state"], e["reason"]) for e in mgr.index()}
            assert states["bad"][0] == "UNAVAILABLE" and "fails to load" in states["bad"][1]
            with pytest.raises(KeyError):
                await mgr.load("nope")
            x = np.ones((1, 4), np.float32)
            assert (await gw.infer("a", x)).variants == ["a/1"]
        finally:
            await gw.stop()

    asyncio.run(main())


def test_cached_profile_vs_flagged_estimate(tmp_path: Path) -> None:
    tiny_model(tmp_path / "repo" / "m" / "1" / "model.onnx")
    tiny_model(tmp_path / "repo" / "m" / "2" / "model.onnx", scale=5.0)  # other bytes
    cache = ProfileCache(tmp_path / "cache")
    from tidal.models.repository import scan_model

    v1 = scan_model(tmp_path / "repo", "m").versions[0]
    fit = LatencyFit(gamma=1.0, delta=0.0, epsilon=0.0, eta=0.5)
    key = cache_key(v1.sha256)
    cache.put(
        CacheEntry(onnx_sha256=v1.sha256, cpu_model=key.cpu_model, cores=key.cores, kind="quick",
                   measured_s=1.0, created=datetime.now(UTC).isoformat(),
                   profile=VariantProfile(name="anything", fit=fit))
    )  # fmt: skip

    async def main() -> None:
        gw, mgr = await _serve(tmp_path, cache)
        try:
            assert gw.stages["m"].fits["m/1"] == fit
            assert gw.stages["m"].fits["m/2"] == ESTIMATE
            assert mgr.estimated() == ["m/2"]
            assert mgr.metadata("m")["profiles"] == {"1": "measured (quick)", "2": "estimated"}
            samples = {
                s.labels["variant"]: s.value
                for fam in mgr.collector().collect()
                for s in fam.samples
            }
            assert samples == {"m/1": 0.0, "m/2": 1.0}
            ps = mgr.profile_set()
            assert ps.variants["m/2"].fit == ESTIMATE and ps.variants["m/1"].fit == fit
        finally:
            await gw.stop()

    asyncio.run(main())


def test_flag_estimates_appends_to_the_planner_reason() -> None:
    class P:
        interval_s = 3.0

        def plan(self, ctx: Any) -> tuple[Plan, None]:
            sp = StagePlan(stage="m", variants=(VariantWeight(name="m/1"),), replicas=1,
                           cores=1.0, batch=1)  # fmt: skip
            return Plan(stages=(sp,), reason="ok"), None

    class Ctx:
        class St:
            variants = [VariantProfile(name="m/1", fit=ESTIMATE)]

        stages = [St()]

    w = FlagEstimates(P(), lambda: ["m/1"])
    plan, _ = w.plan(Ctx())
    assert plan.reason == "ok; conservative estimate (not profiled yet): m/1"
    assert w.interval_s == 3.0  # attributes pass through (Governed's interval, inner)
    plan, _ = FlagEstimates(P(), lambda: []).plan(Ctx())
    assert plan.reason == "ok"

    class Keeps(P):  # hands back the plan in force, with the note of an earlier decision
        def plan(self, ctx: Any) -> tuple[Plan, None]:
            p, _ = super().plan(ctx)
            return p.model_copy(update={"reason": "ok; " + note}), None

    note = "conservative estimate (not profiled yet): m/1"
    assert FlagEstimates(Keeps(), lambda: []).plan(Ctx())[0].reason == "ok"
    assert FlagEstimates(Keeps(), lambda: ["m/1"]).plan(Ctx())[0].reason == "ok; " + note


def test_profile_loop_applies_caches_and_survives_unload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background loop with a FAKE quick profile (the real one needs worker processes:
    tests/integration/test_model_repository.py): the fit replaces the estimate, the cache gets
    the entry, listeners run; a version unloaded while it is profiled is cached, not applied,
    and the loop keeps going."""
    import threading

    from tidal.profiling import manager as mgr_mod
    from tidal.profiling.auto import QuickResult

    tiny_model(tmp_path / "repo" / "a" / "1" / "model.onnx")
    tiny_model(tmp_path / "repo" / "b" / "1" / "model.onnx", scale=7.0)
    fit = LatencyFit(gamma=0.5, delta=0.0, epsilon=0.0, eta=0.1)
    gate = threading.Event()

    def fake_quick(variant: str, budget_s: float, cpu_weight: int | None = 1) -> QuickResult:
        assert cpu_weight is None  # serving-time profiles never starve the serving workers
        if variant == "a/1":
            gate.wait(10)  # a/1 is being profiled while the test unloads it
        return QuickResult(VariantProfile(name=variant, fit=fit), 4, 0.01, 0)

    monkeypatch.setattr(mgr_mod, "quick_profile", fake_quick)
    cache = ProfileCache(tmp_path / "cache")

    async def main() -> None:
        gw, mgr = await _serve(tmp_path, cache)
        calls: list[int] = []
        mgr.listeners.append(lambda: calls.append(1))
        try:
            mgr.auto_profile = True
            mgr.start_profiling()
            await asyncio.sleep(0.05)
            await mgr.unload("a")
            gate.set()
            for _ in range(200):
                if "b/1" in mgr.profiles:
                    break
                await asyncio.sleep(0.02)
            assert gw.stages["b"].fits["b/1"] == fit and mgr.estimated() == []
            assert "a/1" not in mgr.profiles and calls
            assert len(list((tmp_path / "cache").glob("*.quick.json"))) == 2  # a/1 cached too
            await mgr.load("a")  # the cached profile is used at once on reload
            assert gw.stages["a"].fits["a/1"] == fit and mgr.estimated() == []
        finally:
            await mgr.stop()
            await gw.stop()

    asyncio.run(main())


def test_new_version_is_added_without_interrupting_the_model(tmp_path: Path) -> None:
    tiny_model(tmp_path / "repo" / "a" / "1" / "model.onnx")

    async def main() -> None:
        gw, mgr = await _serve(tmp_path, ProfileCache(tmp_path / "cache"))
        try:
            x = np.ones((1, 4), np.float32)
            tiny_model(tmp_path / "repo" / "a" / "2" / "model.onnx", scale=4.0)
            running = [asyncio.create_task(gw.infer("a", x)) for _ in range(5)]
            await mgr.load("a")  # only a new version: no unload, nothing refused
            assert all(r.variants == ["a/1"] for r in await asyncio.gather(*running))
            assert gw.stages["a"].allowed == ["a/1", "a/2"]
            assert gw.models["a"].versions == ["a/1", "a/2"]
            assert [e["version"] for e in mgr.index()] == ["1", "2"]
            assert mgr.estimated() == ["a/1", "a/2"] and gw.stages["a"].fits["a/2"] == ESTIMATE
            sp = StagePlan(stage="a", variants=(VariantWeight(name="a/2"),), replicas=1,
                           cores=1.0, batch=1)  # fmt: skip
            await gw.apply_plan(Plan(stages=(sp,)))
            assert (await gw.infer("a", x, version="a/2")).variants == ["a/2"]
            # a changed file of an existing version is a replace (unload + load)
            tiny_model(tmp_path / "repo" / "a" / "1" / "model.onnx", scale=9.0)
            await mgr.load("a")
            assert (await gw.infer("a", x)).variants == ["a/1"]  # the new initial plan
        finally:
            await gw.stop()

    asyncio.run(main())
