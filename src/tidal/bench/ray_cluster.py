"""`tidal bench ray-cluster`: the two-stage example under one policy on one machine and on a
local multi-node Ray cluster, with the cores scaled to match, on the bursty window.

The load is the demo's (docs/user-guide.md, `make demo`; `tidal.apps.demo.make_setup`): the
planners' two-stage pipeline (examples/pipelines/two-stage.yaml), the IPA "bursty" window of
the Twitter trace (a synthetic 44 -> 220 req/s spike without ../shared, and it says so)
compressed `compress`x and scaled so the surge's peak asks `peak_load` of the pipeline's
capacity on `C` cores, with the profile scaled by the slowdown a probe measured here first
(12 requests at the initial plan); the SLO is 3x the pipeline's p99 at the initial plan
unless given. `C` is the machine's cores minus `reserve` (default 0: with 3 nodes on a
2-core machine, 3 x 2/3 cores against one machine of 2 cores; the gateway, the Ray processes
and the load generator share the machine in every run). One schedule (same arrival times)
is replayed open loop on every run, each a fresh closed loop in a child process
(`run_policy`, as the demo):

- `local`: one machine, the local substrate, planned as 1 node x `C` cores;
- `local-nodes`: the local substrate planned as `nodes` x `C/nodes` cores (the planners'
  capacity model of the cluster: a replica never exceeds a node), so the only difference
  left to `ray` is the substrate;
- `ray`: a `ray.cluster_utils.Cluster` started here with a head that hosts nothing and `nodes`
  worker nodes, each a real raylet; the closed loop is the Ray driver
  (``--substrate ray --address ...``) and plans for ``nodes x C/nodes`` cores. Ray counts
  whole CPUs, so a 2/3-core node is a 1-CPU raylet whose other 1/3 the Ray substrate holds
  (`RayFactory._fill`): Ray's free CPUs equal Tidal's. Themis' grid divides such a node
  (step 1/3, `tidal.planners.themis.node_step`), so a replica can grow to a whole node.

Runs can be split over several invocations (each short enough for the shared benchmark
lock): `only` picks the runs, and `against` (a previous result) supplies the others, after
checking that its setup (slowdown, SLO, requests, cores, policy) is the same; its load
averages are kept with it.

It prints requests, violations (refused, expired, late and errors count) and their rate, p99
and core-seconds of every run, each stage's observed latency over its profile's (median and
p90 over the controller's decisions, from the decision log), the differences in percentage
points against `local`, and the load average at start and end. This is a benchmark: it
asserts nothing; the machine is shared and every run sees its noise (on a 2-core machine the
3 "nodes" share the same two physical cores).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tidal.core.clock import MonotonicClock
from tidal.core.errors import TidalError

RUNS = ("local", "local-nodes", "ray")
SAME = ("policy", "slowdown", "slo_ms", "requests", "cores", "nodes", "trace", "best_effort")
BEST_EFFORT = ["--best-effort"]
"""Every run applies a plan its planner flags infeasible when the actuator accepts it (it
fits): themis' plan for the most a surge beyond the nodes can have (else each run served
the surge on the smaller plan in force)."""


def bench_ray_cluster(
    policy: str = "themis",
    nodes: int = 3,
    compress: int = 8,
    peak_load: float = 0.5,
    slo_ms: float | None = None,
    duration_s: float | None = 100.0,
    seed: int = 0,
    probe: bool = True,
    reserve: float = 0.0,
    only: Sequence[str] = RUNS,
    against: dict[str, Any] | None = None,
    keep: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run `only` (default all of RUNS) and return {"runs": {name: summary}, "pp": {...},
    ...}. `against`: a previous result whose runs fill the others (same setup, else
    TidalError naming the field); its slowdown is reused instead of probing. `keep`: keep
    each run's files (decisions, outcomes) there. `progress` gets one line per phase."""
    from tidal.apps.demo import make_setup, probe_slowdown

    bad = [r for r in only if r not in RUNS]
    if bad or not only:
        raise TidalError(f"unknown runs {bad or only!r}; valid: {', '.join(RUNS)}")
    clock = MonotonicClock()
    t0 = clock.now()

    def note(msg: str) -> None:
        if progress is not None:
            progress(f"[{clock.now() - t0:6.1f} s] {msg}")

    load0 = os.getloadavg()
    kw: dict[str, Any] = {
        "reserve": reserve,
        "slo_ms": slo_ms,
        "compress": compress,
        "peak_load": peak_load,
        "seed": seed,
        "duration_s": duration_s,
    }
    setup = make_setup(**kw)
    with tempfile.TemporaryDirectory(prefix="tidal-bench-ray-") as tmp:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        slow = 1.0
        if against is not None:
            slow = float(against["slowdown"])
        elif probe:
            (work / "probe").mkdir(exist_ok=True)
            slow = probe_slowdown(setup, work / "probe")
            note(f"probe: the pipeline runs x{slow:.2f} its profile here")
        if slow > 1.05:
            setup = make_setup(**kw, slowdown=slow)
        out: dict[str, Any] = {
            "trace": setup.trace_desc,
            "policy": policy,
            "slo_ms": setup.slo_ms,
            "slowdown": slow,
            "requests": len(setup.schedule.offsets),
            "cores": setup.cores,
            "nodes": nodes,
            "cores_per_node": setup.cores / nodes,
            "best_effort": True,
            "runs": {},
        }
        if against is not None:
            for k in SAME:
                if against.get(k) != out[k]:
                    raise TidalError(
                        f"the earlier result has {k}={against.get(k)!r}, this setup "
                        f"{out[k]!r}: not the same run"
                    )
            for name, s in against["runs"].items():
                if name not in only:
                    out["runs"][name] = {**s, "earlier": True}
        note(f"{out['requests']} requests over {setup.schedule.duration_s:.0f} s")
        for name in (r for r in RUNS if r in only):
            (work / name).mkdir(exist_ok=True)
            out["runs"][name] = _run(name, setup, policy, nodes, work / name)
            note(f"{name}: done")
    _differences(out)
    out["loadavg_start"], out["loadavg_end"] = load0, os.getloadavg()
    return out


def _run(name: str, setup: Any, policy: str, nodes: int, work: Path) -> dict[str, Any]:
    """One run's summary, with the load average at its start and end."""
    from tidal.apps.demo import run_policy
    from tidal.apps.validate import live_summary

    per_node = setup.cores / nodes
    load0 = os.getloadavg()
    if name == "local":
        s = live_summary(run_policy(setup, policy, work, server_args=BEST_EFFORT))
    elif name == "local-nodes":
        args = [*BEST_EFFORT, "--nodes", str(nodes), "--cores-per-node", f"{per_node:g}"]
        s = live_summary(run_policy(setup, policy, work, server_args=args))
    else:
        s = _ray_run(setup, policy, nodes, per_node, work)
    slow = stage_slowdowns(work / f"decisions-{policy}.jsonl")
    return {**s, "stage_slowdown": slow, "loadavg_start": load0, "loadavg_end": os.getloadavg()}


def stage_slowdowns(path: Path) -> dict[str, dict[str, float]]:
    """Per stage, the median and p90 over the run's decisions of the latency the controller
    observed divided by the profile's (`inputs.slowdown` in the decision log; decisions
    without traffic on a stage report none), and how many decisions reported one."""
    import json

    import numpy as np

    per: dict[str, list[float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            for stage, v in (json.loads(line).get("inputs", {}).get("slowdown") or {}).items():
                per.setdefault(stage, []).append(float(v))
    return {
        st: {
            "median": float(np.median(v)),
            "p90": float(np.percentile(v, 90)),
            "decisions": float(len(v)),
        }
        for st, v in sorted(per.items())
    }


def _ray_run(setup: Any, policy: str, nodes: int, per_node: float, work: Path) -> dict[str, Any]:
    from tidal.apps.demo import run_policy
    from tidal.apps.validate import live_summary
    from tidal.control.ray_connect import _ray

    ray = _ray()
    from ray.cluster_utils import Cluster

    cluster: Any = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=max(1, round(per_node + 0.499)))
        cluster.wait_for_nodes()
        args = [*BEST_EFFORT, "--substrate", "ray", "--address", cluster.address]
        args += ["--nodes", str(nodes)]
        args += ["--cores-per-node", f"{per_node:g}"]
        return live_summary(run_policy(setup, policy, work, server_args=args))
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def _differences(out: dict[str, Any]) -> None:
    runs = out["runs"]
    out["pp"] = {}
    if "local" in runs:
        base = runs["local"]["slo_violation_rate"]
        for name in ("local-nodes", "ray"):
            if name in runs:
                out["pp"][f"{name} - local"] = 100.0 * (runs[name]["slo_violation_rate"] - base)
    if "local-nodes" in runs and "ray" in runs:
        a, b = runs["ray"]["slo_violation_rate"], runs["local-nodes"]["slo_violation_rate"]
        out["pp"]["ray - local-nodes"] = 100.0 * (a - b)


def format_report(r: dict[str, Any]) -> str:
    """A plain table of `bench_ray_cluster`'s result."""
    lines = [
        f"trace: {r['trace']}",
        f"policy {r['policy']}, SLO {r['slo_ms']:g} ms (probe: x{r['slowdown']:.2f} the "
        f"profile here), {r['requests']} requests; one machine with {r['cores']:g} cores vs "
        f"{r['nodes']} nodes x {r['cores_per_node']:.3g} cores",
        f"{'run':<12} {'requests':>8} {'violations':>10} {'rate':>8} {'p99 ms':>8} "
        f"{'core-s':>7}  {'load avg start/end':<18}",
    ]
    for name in RUNS:
        s = r["runs"].get(name)
        if s is None:
            continue
        p99 = "-" if s["p99_ms"] is None else f"{s['p99_ms']:.0f}"
        v = s["violations"]
        total = sum(v.values()) if isinstance(v, dict) else v
        causes = ", ".join(f"{k} {n}" for k, n in v.items() if n) if isinstance(v, dict) else ""
        la0, la1 = s["loadavg_start"], s["loadavg_end"]
        flags = "" if s.get("loadgen_kept_up", True) else " [load generator fell behind]"
        flags += " [earlier invocation]" if s.get("earlier") else ""
        lines.append(
            f"{name:<12} {s['requests']:>8} {total:>10} "
            f"{100 * s['slo_violation_rate']:>7.2f}% {p99:>8} {s['core_seconds']:>7.1f}  "
            f"{la0[0]:>4.1f} / {la1[0]:<4.1f}" + (f"  ({causes})" if causes else "") + flags
        )
    lines.append("observed / profile latency per stage over the decisions (median, p90):")
    for name in RUNS:
        s = r["runs"].get(name)
        if s is None or not s.get("stage_slowdown"):
            continue
        parts = [
            f"{st} x{v['median']:.2f} (p90 x{v['p90']:.2f})"
            for st, v in s["stage_slowdown"].items()
        ]
        lines.append(f"  {name:<12} " + ", ".join(parts))
    for k, pp in r["pp"].items():
        lines.append(f"violations, {k}: {pp:+.2f} pp")
    la0, la1 = r["loadavg_start"], r["loadavg_end"]
    lines.append(
        f"load average of this invocation: start {la0[0]:.1f} {la0[1]:.1f}, "
        f"end {la1[0]:.1f} {la1[1]:.1f}"
    )
    return "\n".join(lines)


__all__ = ["RUNS", "bench_ray_cluster", "format_report"]
