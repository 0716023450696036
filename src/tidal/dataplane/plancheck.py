"""Plans checked against the machine before they are applied (admin endpoint and controller).

Contract: :func:`check_plan` raises :class:`PlanRejected` (HTTP 409, nothing applied) when
- a replica would get more cores than a node has (``cores`` per replica > capacity);
- the plan's total cores (replicas x cores over every stage and variant) exceed the capacity;
- the plan's total replicas exceed ``max_replicas`` (each replica is a worker process: an
  unbounded count is a fork bomb);
- a stage gets 0 replicas without an explicit scale-to-zero (``scale_to_zero=True``; over
  HTTP ``PUT /admin/plan?scale_to_zero=true``). A stage scaled to zero reports not ready
  with the reason (:func:`zero_reason`).
The message names the stage, the value and the limit. Check the plan *merged* with the plan in
force (:func:`merged`): an admin plan may name only some stages.
"""

from __future__ import annotations

from typing import Any

from tidal.core.errors import TidalError
from tidal.core.plan import Plan

_EPS = 1e-9


class PlanRejected(TidalError):
    """The plan does not fit the machine (HTTP 409); it was not applied."""

    status = 409


def merged(current: Plan | None, new: Plan) -> Plan:
    """`new` over `current`: the plan that would be in force after applying `new`."""
    if current is None:
        return new
    by_name = {s.stage: s for s in current.stages}
    by_name.update({s.stage: s for s in new.stages})
    order = [s.stage for s in current.stages] + [
        s.stage for s in new.stages if s.stage not in {c.stage for c in current.stages}
    ]
    return Plan(stages=tuple(by_name[n] for n in order), feasible=new.feasible, reason=new.reason)


def check_plan(
    plan: Plan,
    *,
    capacity_cores: float,
    max_replicas: int,
    scale_to_zero: bool = False,
    zero_ok: frozenset[str] = frozenset(),
) -> None:
    """Raise PlanRejected naming the first violated limit (see the module docstring).
    `zero_ok`: stages already scaled to zero in force (re-sending them is not a new request)."""
    total_cores = 0.0
    total_replicas = 0
    for sp in plan.stages:
        for v in sp.variants:
            n, c = sp.replicas_of(v.name), sp.cores_of(v.name)
            if n > 0 and c > capacity_cores + _EPS:
                raise PlanRejected(
                    f"stage {sp.stage!r} variant {v.name!r}: {c:g} cores per replica exceed the "
                    f"node's {capacity_cores:g} cores"
                )
            total_cores += n * c
            total_replicas += n
        if sp.total_replicas == 0 and not scale_to_zero and sp.stage not in zero_ok:
            raise PlanRejected(
                f"stage {sp.stage!r}: replicas 0 scales it to zero and it stops serving; "
                "send it with scale_to_zero=true if that is meant"
            )
    if total_cores > capacity_cores + _EPS:
        raise PlanRejected(
            f"plan needs {total_cores:g} cores in total; the capacity is {capacity_cores:g} "
            "cores (limits.capacity_cores)"
        )
    if total_replicas > max_replicas:
        raise PlanRejected(
            f"plan has {total_replicas} replicas in total; at most {max_replicas} "
            "(limits.max_replicas)"
        )


def check_admin_plan(gateway: Any, plan: Plan, *, scale_to_zero: bool = False) -> None:
    """check_plan for `plan` merged with `gateway`'s plan in force, against the limits of its
    config (``ServeConfig.limits``). Raises PlanRejected."""
    limits = gateway.config.limits
    cur: Plan | None = gateway.current_plan()
    zero = frozenset(s.stage for s in cur.stages if s.total_replicas == 0) if cur else frozenset()
    check_plan(
        merged(cur, plan),
        capacity_cores=limits.capacity_resolved(),
        max_replicas=limits.max_replicas_resolved(),
        scale_to_zero=scale_to_zero,
        zero_ok=zero,
    )


def zero_reason(plan: Plan | None, stages: list[str]) -> str:
    """Why a model over `stages` is not ready because of `plan` ('' when it is not scaled to
    zero)."""
    if plan is None:
        return ""
    for sp in plan.stages:
        if sp.stage in stages and sp.total_replicas == 0:
            return f"stage {sp.stage!r} is scaled to zero by the plan in force (replicas 0)"
    return ""


__all__ = ["PlanRejected", "check_admin_plan", "check_plan", "merged", "zero_reason"]
