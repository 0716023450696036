"""`tidal demo`: the two-stage pipeline under a Twitter surge, live, under `hpa` then `themis`.

For each policy the demo starts a fresh closed loop (gateway + controller + dashboard) in a
child process (`tidal.apps.server_main`), replays the same open-loop schedule against it
from this process (`tidal.workload.loadgen`), samples the dashboard's JSON every second for
the figures, and stops it. Both runs start from the same initial plan (1 replica x 0.5 cores,
batch 1, the first variant of each stage) on the same capacity (this machine's cores).

The schedule: the IPA "bursty" Twitter window (44 -> 220 req/s surge), time-compressed and
damped so that the surge peak asks about `peak_load` of what the pipeline can serve on this
machine (computed from the profile); without ../shared, a synthetic spike, and the demo says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml

from tidal.core.clock import Clock, MonotonicClock
from tidal.core.errors import TidalError
from tidal.core.pipeline import PipelineSpec
from tidal.core.profile import ProfileSet, VariantProfile
from tidal.core.shared import repo_root, shared_path
from tidal.planners.common import BATCHES, stage_latency_ms
from tidal.workload import load_trace
from tidal.workload.loadgen import LoadGenerator, LoadReport, Outcome, Schedule, schedule_from_rates

POLICIES = ("hpa", "themis")
POLICY_KWARGS: dict[str, dict[str, Any]] = {
    # HPA scales replicas of a fixed size; 0.5 cores each lets it scale out on 2 cores.
    "hpa": {"cores": 0.5, "batch": 1},
    "themis": {},
}
FORECAST = {"hpa": None, "themis": "lstm"}  # Themis: the paper's LSTM (IPA setting)


@dataclass
class DemoSetup:
    """Everything both runs share."""

    pipeline: PipelineSpec
    pipeline_file: str
    profiles: ProfileSet
    slo_ms: float
    cores: float
    schedule: Schedule
    rates: np.ndarray
    trace_desc: str
    synthetic: bool
    serve_config: dict[str, Any]


@dataclass
class RunResult:
    """One policy's live run."""

    policy: str
    report: LoadReport
    outcomes: list[Outcome]
    core_seconds: float
    accuracy: float
    series: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    dashboard: str = ""

    def row(self) -> dict[str, Any]:
        r = self.report
        return {
            "policy": self.policy,
            "requests": r.requests,
            "slo_violation_rate": round(r.violation_rate, 4),
            "violations": {k: v for k, v in r.counts.items() if k != "ok"},
            "p50_ms": _r(r.p50_ms),
            "p99_ms": _r(r.p99_ms),
            "core_seconds": round(self.core_seconds, 1),
            "accuracy": _r(self.accuracy, 4),
            "loadgen_kept_up": r.kept_up,
        }


def _r(x: float, k: int = 1) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), k)


# ---------------------------------------------------------------------------- setup
def find_pipeline(path: str | None = None) -> tuple[PipelineSpec, str]:
    """`path`, else the planners' two-stage pipeline, else the data plane's two-stage
    example."""
    if path:
        return PipelineSpec.load(path), path
    root = repo_root()
    p = root / "examples" / "pipelines" / "two-stage.yaml"
    if p.is_file():
        return PipelineSpec.load(p), str(p.relative_to(root))
    serve = root / "examples" / "two-stage.yaml"
    if serve.is_file():
        raw = yaml.safe_load(serve.read_text())
        pl = raw["pipelines"][0]
        spec = PipelineSpec.model_validate(
            {
                "name": pl["name"],
                "stages": [
                    {"name": s["name"], "task": s["name"], "variants": s["variants"]}
                    for s in pl["stages"]
                ],
            }
        )
        return spec, str(serve.relative_to(root))
    raise TidalError("no two-stage pipeline found under examples/")


def pipeline_capacity(
    stages: list[VariantProfile], cores: float, slo_ms: float, step: float = 0.5
) -> float:
    """Highest rate (req/s) one replica per stage can carry on `cores` cores in total within
    the SLO (profile model: p99 latency + batch filling), over core splits and batches."""
    best = 0.0
    n = len(stages)
    grid = [step * k for k in range(1, int(cores / step) + 1)]

    def rec(i: int, left: float, chosen: list[float]) -> None:
        nonlocal best
        if i == n:
            for b in BATCHES:
                rate = min(p.throughput(b, c) for p, c in zip(stages, chosen, strict=True))
                lat = sum(
                    stage_latency_ms(p, b, c, rate) for p, c in zip(stages, chosen, strict=True)
                )
                if lat <= slo_ms:
                    best = max(best, rate)
            return
        for c in grid:
            if c <= left + 1e-9:
                rec(i + 1, left - c, [*chosen, c])

    rec(0, cores, [])
    return best


def make_setup(
    slo_ms: float | None = None,
    compress: int = 8,
    peak_load: float = 0.5,
    seed: int = 0,
    duration_s: float | None = None,
    profiles: ProfileSet | None = None,
    reserve: float = 0.0,
    slowdown: float = 1.0,
) -> DemoSetup:
    """Pipeline, profile, SLO and the damped, compressed surge schedule.

    `slowdown` (from :func:`probe_slowdown`) is how much slower the pipeline runs on this
    machine now than its profile says (a machine shared with other jobs): the SLO and the
    load are sized with the profile scaled by it."""
    from tidal.control.closedloop import load_profiles

    spec, pfile = find_pipeline()
    ps = profiles or load_profiles()
    missing = [v for st in spec.stages for v in st.variants[:1] if v not in ps.variants]
    if missing:
        raise TidalError(
            f"the profile has no entry for {missing} (needed to size the demo); "
            f"profile has {sorted(ps.variants)}; run `tidal profile`"
        )
    from tidal.control.controller import _scaled

    first = [_scaled(ps.get(st.variants[0]), slowdown) for st in spec.stages]
    machine = float(os.cpu_count() or 2)
    # Workers may get the machine minus `reserve` cores (the gateway and the load generator
    # run here too; 0 by default: planners see the machine as it is).
    cores = max(0.5, machine - reserve)
    if slo_ms is None:
        # 3x the pipeline's p99 at the initial plan (0.5 cores per stage, batch 1).
        slo_ms = max(50.0, round(3 * sum(p.p99_ms(1, 0.5) for p in first) / 50) * 50)
    cap = pipeline_capacity(first, cores, slo_ms)
    if cap <= 0:
        raise TidalError(f"the pipeline cannot meet a {slo_ms} ms SLO on {cores:g} cores")
    synthetic = shared_path("traces", "twitter_2021-08_per_second.txt") is None
    if synthetic:
        base = load_trace("synthetic:spike:1200:44:220", seed=seed)
        desc = "synthetic spike 44 -> 220 req/s (no ../shared Twitter trace on this machine)"
    else:
        base = load_trace("twitter:bursty", damping=1)
        desc = "Twitter Aug 2021, IPA 'bursty' window (seconds 1301160-1302360)"
    # Damping: scale so the compressed surge peak (60-s mean) is `peak_load` of capacity.
    peak = float(np.max(np.convolve(base, np.ones(60) / 60, mode="valid"))) * compress
    factor = peak_load * cap / peak
    rates = _compress(base * factor, compress)
    sched = schedule_from_rates(rates, seed=seed, slo_ms=slo_ms, duration_s=duration_s)
    if slowdown > 1.05:
        desc += f"; this machine ran the pipeline x{slowdown:.1f} slower than its profile"
    desc += (
        f", damped x{factor:.3f} and compressed x{compress}: {len(rates)} s, "
        f"{rates[:30].mean():.0f} -> {np.max(np.convolve(rates, np.ones(8) / 8, mode='valid')):.0f}"
        f" req/s; the pipeline's capacity on {cores:g} worker cores is ~{cap:.0f} req/s "
        f"(profile x slowdown; {machine:g} cores on this machine)"
    )
    serve = serve_config(spec, slo_ms)
    return DemoSetup(spec, pfile, ps, slo_ms, cores, sched, rates, desc, synthetic, serve)


def serve_config(spec: PipelineSpec, slo_ms: float) -> dict[str, Any]:
    """A `tidal serve` config for `spec`: every stage starts at 1 replica x 0.5 cores,
    batch 1, of its first variant (both policies start from this same plan)."""
    init = {
        "stages": [
            {
                "stage": st.name,
                "variants": [{"name": st.variants[0]}],
                "replicas": 1,
                "cores": 0.5,
                "batch": 1,
            }
            for st in spec.stages
        ]
    }
    return {
        "host": "127.0.0.1",
        "port": 0,
        "default_slo_ms": slo_ms,
        "pipelines": [
            {
                "name": spec.name,
                "stages": [{"name": st.name, "variants": list(st.variants)} for st in spec.stages],
            }
        ],
        "plan": init,
    }


def _compress(rates: np.ndarray, k: int) -> np.ndarray:
    n = len(rates) // k * k
    return rates[:n].reshape(-1, k).sum(axis=1)


# ---------------------------------------------------------------------------- one run
def probe_slowdown(setup: DemoSetup, workdir: Path, requests: int = 12) -> float:
    """Measure how much slower than its profile the pipeline runs here now: start the
    gateway at the initial plan (no controller), send `requests` requests one at a time,
    and divide the median latency by the profile's (batch 1, 0.5 cores per stage)."""
    cfg = workdir / "probe.yaml"
    cfg.write_text(yaml.safe_dump(setup.serve_config, sort_keys=False))
    prof = workdir / "profile.json"
    setup.profiles.save(prof)
    server = Server(cfg, "", workdir, prof)
    try:
        port = server.wait_ready()
        return asyncio.run(_probe(setup, f"http://127.0.0.1:{port}", requests))
    finally:
        server.stop()


async def _probe(setup: DemoSetup, base: str, n: int) -> float:
    from tidal.workload.loadgen import fetch_metadata, v2_binary_body_from_metadata

    body, hlen = v2_binary_body_from_metadata(await fetch_metadata(base, setup.pipeline.name))
    url = f"{base}/v2/models/{setup.pipeline.name}/infer"
    lat = []
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(hlen),
        "x-tidal-slo-ms": "60000",
    }
    from tidal.core.clock import MonotonicClock

    clock = MonotonicClock()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        for i in range(n + 2):
            t0 = clock.now()
            async with s.post(url, data=body, headers=headers) as r:
                await r.read()
                ok = r.status == 200
            if i >= 2 and ok:  # the first two warm the path
                lat.append((clock.now() - t0) * 1000.0)
            await asyncio.sleep(0.05)
    if not lat:
        return 1.0
    pred = sum(
        setup.profiles.get(st.variants[0]).latency_ms(1, 0.5) for st in setup.pipeline.stages
    )
    return max(1.0, float(np.median(lat)) / pred)


class Server:
    """A closed loop in a child process (`python -m tidal.apps.server_main`)."""

    def __init__(
        self,
        config: Path,
        policy: str,
        workdir: Path,
        profile: Path | None,
        cores: float | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.decisions = workdir / f"decisions-{policy}.jsonl"
        args = [
            sys.executable,
            "-m",
            "tidal.apps.server_main",
            str(config),
            "--decisions",
            str(self.decisions),
        ]
        if policy:
            args += [
                "--policy",
                policy,
                "--policy-kwargs",
                json.dumps(POLICY_KWARGS.get(policy, {})),
            ]
        if FORECAST.get(policy):
            args += ["--forecast", str(FORECAST[policy])]
        if profile is not None:
            args += ["--profile", str(profile)]
        if cores is not None:
            args += ["--cores-per-node", f"{cores:g}"]
        args += list(extra_args)  # e.g. --substrate ray --address ... --nodes N
        self.log = (workdir / f"server-{policy or 'probe'}.log").open("w")
        # The dashboard's JSON (sampled for the figures) needs the admin token: a fresh
        # random one per run, given to the child only.
        self.token = secrets.token_urlsafe(24)
        env = {**os.environ, "TIDAL_TOKEN": self.token}
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,
            env=env,
        )
        self.port = 0

    def wait_ready(self, timeout_s: float = 120.0) -> int:
        import selectors

        sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        from tidal.core.clock import MonotonicClock

        clock = MonotonicClock()
        t0 = clock.now()
        while clock.now() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise TidalError(f"the Tidal server exited with {self.proc.returncode}; see log")
            if sel.select(timeout=0.5):
                line = self.proc.stdout.readline()
                if line.startswith("TIDAL-READY"):
                    self.port = int(line.split()[1])
                    return self.port
        raise TidalError(f"the Tidal server was not ready after {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


async def _sample(
    base: str, out: list[dict[str, Any]], stop: asyncio.Event, token: str, clock: Clock, t0: float
) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        while not stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with s.get(f"{base}/dashboard/data.json", headers=auth) as r:
                    if r.status != 200:
                        raise TidalError(
                            f"dashboard data answered {r.status}: {(await r.text())[:200]}"
                        )
                    d = await r.json()
                    out.append({"t": clock.now() - t0, "data": d})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)


def _core_s(snapshot: dict[str, Any]) -> float:
    return float(sum(st.get("totals", {}).get("core_s", 0.0) for st in snapshot["stages"]))


ACCOUNT_DRAIN_S = 2.0
"""A live run's core-seconds are integrated over [load start, load start + the trace's
length + this]: the window the simulator integrates (`tidal validate` sets its `drain_s`)."""


def core_readings(series: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(time, cumulative core-seconds) of each distinct monitor reading in the dashboard
    samples, time in the sampler's frame: the sample's time plus its last monitor sample's
    offset (the dashboard's totals are the monitor's latest reading, taken at the
    controller's tick, not at the request)."""
    out: list[tuple[float, float]] = []
    for e in series:
        stages = e["data"].get("stages", [])
        offsets = [st["t"][-1] for st in stages if st.get("t")]
        if not offsets or len(offsets) != len(stages):
            continue
        t = float(e["t"]) + max(offsets)
        if out and t <= out[-1][0] + 1e-3:  # the same reading, read again
            continue
        out.append((t, _core_s(e["data"])))
    return out


def core_seconds_between(readings: list[tuple[float, float]], t0: float, t1: float) -> float:
    """Core-seconds held in [t0, t1]: the cumulative count interpolated linearly between the
    readings around each end (exact when the allocation did not change between them), and
    extended at the first (last) interval's rate before (after) the readings; nan with
    fewer than two readings."""
    if len(readings) < 2:
        return math.nan
    ts = np.array([r[0] for r in readings])
    cs = np.array([r[1] for r in readings])

    def at(t: float) -> float:
        if t < ts[0]:
            return float(cs[0] - (ts[0] - t) * (cs[1] - cs[0]) / (ts[1] - ts[0]))
        if t > ts[-1]:
            return float(cs[-1] + (t - ts[-1]) * (cs[-1] - cs[-2]) / (ts[-1] - ts[-2]))
        return float(np.interp(t, ts, cs))

    return at(t1) - at(t0)


def accuracy_of(outcomes: list[Outcome], profiles: ProfileSet, combine: str) -> float:
    """Mean accuracy over answered requests of the variants that served them."""
    accs = []
    cache: dict[str, float] = {}
    for o in outcomes:
        if o.status != 200 or not o.variant:
            continue
        if o.variant not in cache:
            parts = []
            for v in o.variant.split("+"):
                parts.append(profiles.variants[v].accuracy if v in profiles.variants else math.nan)
            cache[o.variant] = float(np.sum(parts) if combine == "sum" else np.prod(parts))
        accs.append(cache[o.variant])
    return float(np.nanmean(accs)) if accs else math.nan


def run_policy(
    setup: DemoSetup,
    policy: str,
    workdir: Path,
    on_ready: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    server_args: Sequence[str] = (),
) -> RunResult:
    """Start a fresh closed loop under `policy`, replay the schedule, stop it.

    `server_args` go to the closed loop's command line (`tidal.apps.server_main`), e.g. the
    Ray substrate's ``--substrate ray --address ADDR --nodes N``."""
    cfg = workdir / "serve.yaml"
    cfg.write_text(yaml.safe_dump(setup.serve_config, sort_keys=False))
    prof = workdir / "profile.json"
    setup.profiles.save(prof)
    server = Server(cfg, policy, workdir, prof, setup.cores, server_args)
    try:
        port = server.wait_ready()
        base = f"http://127.0.0.1:{port}"
        if on_ready:
            on_ready(f"{base}/dashboard")
        url = f"{base}/v2/models/{setup.pipeline.name}/infer"
        return asyncio.run(_replay(setup, policy, base, url, server, on_progress))
    finally:
        server.stop()


async def _replay(
    setup: DemoSetup,
    policy: str,
    base: str,
    url: str,
    server: Server,
    on_progress: Callable[[int, int], None] | None,
) -> RunResult:
    from tidal.control.decisions import read_log
    from tidal.workload.loadgen import fetch_metadata, v2_binary_body_from_metadata

    body, hlen = v2_binary_body_from_metadata(await fetch_metadata(base, setup.pipeline.name))
    series: list[dict[str, Any]] = []
    stop = asyncio.Event()
    clock = MonotonicClock()
    t0 = clock.now()
    sampler = asyncio.create_task(_sample(base, series, stop, server.token, clock, t0))
    await asyncio.sleep(1.5)  # monitor readings before the load starts
    gen = LoadGenerator(
        url,
        body,
        header_length=hlen,
        on_progress=on_progress,
        timeout_s=30.0,
        lag_tolerance_s=max(0.010, setup.slo_ms / 1000 / 20),
    )
    outcomes, report = await gen.run(setup.schedule)
    # The accounting window, in the sampler's frame: the load started `duration_s` ago.
    load_t = clock.now() - t0 - report.duration_s
    window_end = load_t + len(setup.rates) + ACCOUNT_DRAIN_S
    # Readings past the window's end: the controller reads each second, the sampler too.
    await asyncio.sleep(max(1.2, window_end - (clock.now() - t0) + 2.5))
    stop.set()
    await sampler
    core_s = core_seconds_between(core_readings(series), load_t, window_end)
    decisions = read_log(server.decisions) if server.decisions.is_file() else []
    acc = accuracy_of(outcomes, setup.profiles, setup.pipeline.accuracy_combine)
    return RunResult(policy, report, outcomes, core_s, acc, series, decisions, base + "/dashboard")
