"""`tidal bench ray-cluster`: the same trace and policy on one machine and on a local
multi-node Ray cluster, with the cores scaled to match.

Both runs use `tidal validate`'s setup (`make_validate_setup`: the pipeline, the reference
profile, the trace window turned into one open-loop schedule) and the demo's live run
(`run_policy`: a fresh closed loop in a child process, the schedule replayed from this one).

- one machine: the local substrate with `C` cores (the machine's cores minus a reserve);
- Ray: a `ray.cluster_utils.Cluster` started here with a head that hosts nothing and `nodes`
  worker nodes, each a real raylet; the closed loop is the Ray driver
  (``--substrate ray --address ...``) and plans for ``nodes x C/nodes`` cores.

It prints violations (refused, expired, late and errors count), p99 and core-seconds for
both, the difference in percentage points, and the load average at start and end. This is a
benchmark: it asserts nothing; the machine is shared and both runs see its noise.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def bench_ray_cluster(
    trace: str = "twitter:bursty",
    policy: str = "themis",
    pipeline: str | None = None,
    nodes: int = 3,
    slo_ms: float = 1000.0,
    duration_s: float = 60.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Run both and return {"local": summary, "ray": summary, "violation_pp": ..., ...}."""
    from tidal.apps.demo import run_policy
    from tidal.apps.validate import live_summary, make_validate_setup
    from tidal.control.ray_substrate import _ray

    ray = _ray()
    from ray.cluster_utils import Cluster

    load0 = os.getloadavg()
    setup = make_validate_setup(trace, pipeline, slo_ms, None, 1, duration_s, seed)
    per_node = setup.cores / nodes
    out: dict[str, Any] = {
        "trace": setup.trace_desc,
        "policy": policy,
        "cores": setup.cores,
        "nodes": nodes,
        "cores_per_node": per_node,
    }
    with tempfile.TemporaryDirectory(prefix="tidal-bench-ray-") as tmp:
        work = Path(tmp)
        (work / "local").mkdir()
        out["local"] = live_summary(run_policy(setup, policy, work / "local"))
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        try:
            for _ in range(nodes):
                cluster.add_node(num_cpus=max(1, round(per_node + 0.499)))
            cluster.wait_for_nodes()
            (work / "ray").mkdir()
            args = ["--substrate", "ray", "--address", cluster.address, "--nodes", str(nodes)]
            args += ["--cores-per-node", f"{per_node:g}"]
            out["ray"] = live_summary(run_policy(setup, policy, work / "ray", server_args=args))
        finally:
            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()
    loc, rem = out["local"], out["ray"]
    out["violation_pp"] = 100.0 * (rem["slo_violation_rate"] - loc["slo_violation_rate"])
    out["loadavg_start"] = load0
    out["loadavg_end"] = os.getloadavg()
    return out


def format_report(r: dict[str, Any]) -> str:
    """A plain table of `bench_ray_cluster`'s result."""
    lines = [
        f"trace {r['trace']}, policy {r['policy']}: one machine with {r['cores']:g} cores vs "
        f"Ray {r['nodes']} nodes x {r['cores_per_node']:g} cores",
        f"{'substrate':<10} {'requests':>8} {'violations':>10} {'rate':>8} {'p99 ms':>9} "
        f"{'core-s':>8}",
    ]
    for name in ("local", "ray"):
        s = r[name]
        p99 = "-" if s["p99_ms"] is None else f"{s['p99_ms']:.0f}"
        v = s["violations"]
        total = sum(v.values()) if isinstance(v, dict) else v
        causes = ", ".join(f"{k} {n}" for k, n in v.items() if n) if isinstance(v, dict) else ""
        lines.append(
            f"{name:<10} {s['requests']:>8} {total:>10} "
            f"{100 * s['slo_violation_rate']:>7.2f}% {p99:>9} {s['core_seconds']:>8.1f}"
            + (f"  ({causes})" if causes else "")
        )
    la0, la1 = r["loadavg_start"], r["loadavg_end"]
    lines.append(f"violations, Ray minus one machine: {r['violation_pp']:+.2f} pp")
    lines.append(f"load average: start {la0[0]:.1f} {la0[1]:.1f}, end {la1[0]:.1f} {la1[1]:.1f}")
    return "\n".join(lines)


__all__ = ["bench_ray_cluster", "format_report"]
