"""What runs, next to what was asked: the body of ``GET /admin/plan``.

A plan is a target. Replicas take seconds to start, a resize can be refused (no room on the
node), and on Ray a replica can stay pending until a node joins. So the admin endpoint
reports three things separately:

- ``target``: the plan last applied (what the planner or the operator asked for), with its
  ``feasible`` flag and ``reason``;
- ``in_force``: per stage and variant, the replicas that are ready, the cores each runs
  with now, the batch in force, and the traffic weight actually routed: a variant with no
  ready replica gets no traffic, and the weights are renormalised over those that have one
  (the reason is given);
- ``pending``: per stage and variant, replicas still starting (or pending placement).

``converged`` is true when every stage's ready replicas match the target's count and cores.
For compatibility the target's own fields (``stages``, ``feasible``, ``reason``) stay at the
top level, so a client that read a Plan keeps working.
"""

from __future__ import annotations

from typing import Any

from tidal.core.plan import Plan


def _target_replicas(plan: Plan) -> dict[tuple[str, str], tuple[int, float]]:
    """(stage, variant) -> (replicas, cores per replica) that `plan` asks for."""
    out: dict[tuple[str, str], tuple[int, float]] = {}
    for sp in plan.stages:
        for v in sp.variants:
            out[(sp.stage, v.name)] = (sp.replicas_of(v.name), sp.cores_of(v.name))
    return out


def plan_status(gw: Any) -> dict[str, Any]:
    """The status document of `gw` (a live Gateway): target, in_force, pending, converged."""
    target: Plan | None = gw.current_plan()
    want = _target_replicas(target) if target is not None else {}
    in_force: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    converged = target is not None
    for sname, stage in gw.stages.items():
        variants = []
        starting = []
        weights = stage.weights  # the target split, by variant
        ready = {n: g.ready() for n, g in stage.groups.items()}
        total = sum(weights.get(n, 0.0) for n, reps in ready.items() if reps)
        for vname, g in stage.groups.items():
            reps = ready[vname]
            cores = sorted({round(float(r.cores), 6) for r in reps})
            asked = weights.get(vname, 0.0)
            routed = asked / total if reps and total > 0 else 0.0
            entry: dict[str, Any] = {
                "name": vname,
                "replicas": len(reps),
                "cores": cores,
                "batch": g.max_batch,
                "weight": round(routed, 6),
            }
            if not reps and asked > 0:
                entry["reason"] = "no ready replica: its traffic goes to the other variants"
            elif reps and abs(routed - asked) > 1e-9:
                entry["reason"] = (
                    f"weight {asked:g} renormalised over the variants with a ready replica"
                )
            variants.append(entry)
            n_starting = g.starting()
            if n_starting:
                starting.append({"name": vname, "replicas": n_starting})
            n, c = want.get((sname, vname), (0, 0.0))
            if len(reps) != n or (n and cores != [round(c, 6)]):
                converged = False
        in_force.append({"stage": sname, "variants": variants})
        for (ws, wv), (n, _) in want.items():
            if ws == sname and n and wv not in stage.groups:
                converged = False
        if starting:
            pending.append({"stage": sname, "variants": starting})
    doc: dict[str, Any] = target.model_dump(mode="json") if target is not None else {}
    doc.update(
        target=target.model_dump(mode="json") if target is not None else None,
        in_force=in_force,
        pending=pending,
        converged=converged,
    )
    return doc


__all__ = ["plan_status"]
