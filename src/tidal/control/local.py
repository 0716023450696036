"""The local substrate: this machine's worker processes behind the in-process Gateway.

- :class:`GatewayMetrics` is the monitor's MetricsSource: it reads
  ``Gateway.metrics_snapshot()`` in process (never over HTTP) and converts it.
- :class:`LocalActuator` applies plans with ``Gateway.apply_plan`` (start replicas, resize in
  place through the worker's cgroup quota / affinity, change batch and weights). ``apply`` is
  non-blocking: it schedules the reconciliation on the gateway's event loop and sets
  ``Actuation.settled_at`` when every new replica is warm.

Both must be used from the gateway's event loop (the controller runs as a task there).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from tidal.control.monitor import StageCounters
from tidal.core.actuator import Actuation
from tidal.core.errors import TidalError
from tidal.core.plan import Plan
from tidal.dataplane.plancheck import PlanRejected, check_plan, merged
from tidal.planners.base import Capacity, Pending
from tidal.planners.common import fits

log = logging.getLogger("tidal.control")


class GatewayMetrics:
    """MetricsSource over a live Gateway (in process)."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self._prev: dict[str, Any] = {}
        self._busy_core_s: dict[str, float] = {}

    def read(self) -> list[StageCounters]:
        snaps = self.gateway.metrics_snapshot()
        plan: Plan | None = self.gateway.current_plan()
        weights: dict[str, dict[str, float]] = {}
        if plan is not None:
            for sp in plan.stages:
                weights[sp.stage] = {v.name: v.weight for v in sp.variants}
        out = []
        for name, s in snaps.items():
            prev = self._prev.get(name)
            cores_per = s.total_cores / s.replicas if s.replicas else 0.0
            if prev is not None:
                # busy_s counts replica-seconds: weight them by the cores per replica now.
                self._busy_core_s[name] = self._busy_core_s.get(name, 0.0) + max(
                    0.0, s.busy_s - prev.busy_s
                ) * (cores_per or 1.0)
            done = s.completions - (prev.completions if prev is not None else 0)
            lat = s.latency_ms[-done:] if 0 < done <= len(s.latency_ms) else ()
            if prev is None or done > len(s.latency_ms):
                lat = s.latency_ms
            self._prev[name] = s
            hist = getattr(getattr(self.gateway.stages.get(name), "counters", None), "batch", None)
            batches = int(getattr(hist, "n", 0))
            items = int(getattr(hist, "sum", 0))
            out.append(
                StageCounters(
                    stage=name,
                    arrivals=s.arrivals,
                    completions=s.completions,
                    violations=dict(s.violations),
                    queue_len=s.queue_len,
                    in_flight=0,
                    busy_core_s=self._busy_core_s.get(name, 0.0),
                    cores=cores_per,
                    replicas=s.replicas,
                    new_latencies_ms=tuple(lat),
                    budgets_ms=tuple(s.budgets_ms),
                    variant_weights=weights.get(name, {}),
                    alloc_core_s=s.core_s,
                    busy_s=s.busy_s,
                    batches=batches,
                    batch_items=items,
                )
            )
        return out

    def starting(self) -> dict[str, int]:
        return {n: s.starting for n, s in self.gateway.metrics_snapshot().items() if s.starting}


class LocalActuator:
    """Actuator over a live Gateway on this machine (see the module docstring)."""

    name = "local"

    def __init__(self, gateway: Any, capacity: Capacity | None = None) -> None:
        self.gateway = gateway
        self._capacity = capacity or Capacity(nodes=1, cores_per_node=float(os.cpu_count() or 1))
        self._last: Actuation | None = None
        self._task: asyncio.Task[None] | None = None

    def capacity(self) -> Capacity:
        return self._capacity

    def current(self) -> Plan | None:
        plan: Plan | None = self.gateway.current_plan()
        return plan

    def pending(self) -> Pending:
        snaps = self.gateway.metrics_snapshot()
        return Pending(starting_replicas={n: s.starting for n, s in snaps.items() if s.starting})

    def apply(self, plan: Plan) -> Actuation:
        now = self.gateway.clock.now()
        act = Actuation(plan=plan, requested_at=now)
        if not fits(plan, self._capacity):
            act.accepted = False
            act.reason = (
                f"plan needs {plan.total_cores:g} cores that do not fit "
                f"{self._capacity.nodes} x {self._capacity.cores_per_node:g} cores"
            )
            return act
        problem = self._check(plan) or self._limits(plan)
        if problem:
            act.accepted, act.reason = False, problem
            return act
        cur = self.current()
        if cur is not None and cur.stages == plan.stages:
            act.changed = False
            act.settled_at = now
            return act
        if self._last is not None and self._last.settled_at is None:
            self._last.superseded = True
        try:
            coro = self.gateway.apply_plan(plan, wait=True)
        except TidalError as e:
            act.accepted, act.reason = False, str(e)
            return act
        self._last = act
        self._task = asyncio.get_running_loop().create_task(self._wait(coro, act))
        return act

    def _check(self, plan: Plan) -> str:
        """A reason the gateway would refuse `plan` (unknown stage or variant), or ''."""
        stages = getattr(self.gateway, "stages", {})
        for sp in plan.stages:
            st = stages.get(sp.stage)
            if st is None:
                return f"unknown stage {sp.stage!r}; stages: {list(stages)}"
            for v in sp.variants:
                if v.name not in st.allowed:
                    return (
                        f"stage {sp.stage!r} cannot run variant {v.name!r}; allowed: {st.allowed}"
                    )
        return ""

    def _limits(self, plan: Plan) -> str:
        """Why `plan` (merged with the plan in force) breaks the machine limits, or ''.
        Total cores against this actuator's capacity (all its nodes: the per-node fit is
        `fits`'), total replicas against the config's `limits.max_replicas`
        (tidal.dataplane.plancheck: one check for the admin endpoint and the controller).
        Planners may scale a stage to zero. (The total was once checked against one node's
        cores: on a 3 x 0.5-core Ray cluster every plan beyond 0.5 cores was refused.)"""
        limits = getattr(getattr(self.gateway, "config", None), "limits", None)
        max_replicas = limits.max_replicas_resolved() if limits is not None else 1 << 30
        try:
            check_plan(
                merged(self.current(), plan),
                capacity_cores=self._capacity.total_cores,
                max_replicas=max_replicas,
                scale_to_zero=True,
            )
        except PlanRejected as e:
            return str(e)
        return ""

    async def _wait(self, coro: Any, act: Actuation) -> None:
        try:
            await coro
        except TidalError as e:
            act.accepted, act.reason = False, str(e)
            log.warning("plan refused by the gateway: %s", e)
            return
        except Exception as e:  # keep serving the plan in force
            act.notes.append(f"apply failed: {e!r}")
            log.exception("applying plan failed")
            return
        act.settled_at = self.gateway.clock.now()
