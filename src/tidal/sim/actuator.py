"""The simulator's actuator: applies Plans to simulated replicas on simulated nodes.

Implements the `tidal.core.actuator.Actuator` contract (apply/current/pending/capacity):

- Replicas are placed first-fit on nodes of ``cores_per_node`` cores; one that does not fit
  stays *pending* (a Kubernetes pending pod) and is placed, in creation order, as soon as cores
  free up. A placed replica is *starting* for the variant's ``load_time_s`` (cold start), then
  *ready* (the data plane routes to it). Starting replicas hold their cores (core-seconds count
  them).
- Scale in removes pending replicas first, then starting, then ready ones (newest first); a
  removed ready replica finishes its in-flight batch (the data plane's contract) and its cores
  are freed at once.
- A change of cores per replica is applied in place after ``resize_s`` (config, else the
  profile's), if the node has room for the growth (else it waits, as a deferred in-place
  resize); with a planner whose ``resize_mode`` is Recreate (VPA's default) the replica is
  deleted and a new one started (cold start).
- A plan that can never fit (a replica larger than a node) raises TidalError naming the policy,
  the variant and the figures. A plan asking more cores than the cluster has is applied: the
  replicas that do not fit stay pending (counted in ``stats.over_capacity``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from tidal.core.actuator import Actuation
from tidal.core.errors import TidalError
from tidal.core.plan import Plan
from tidal.core.profile import VariantProfile
from tidal.planners.base import Capacity, Pending
from tidal.sim.config import US

EPS = 1e-9


class DataPlaneHooks(Protocol):
    def set_lane(self, stage: int, lane: int, batch: int, weight: float) -> None: ...
    def add_replica(self, rid: int, stage: int, lane: int, cores: float) -> None: ...
    def remove_replica(self, rid: int) -> None: ...
    def resize_replica(self, rid: int, cores: float) -> None: ...


@dataclass
class SimReplica:
    rid: int
    stage: int
    lane: int
    cores: float
    state: str = "pending"  # pending | starting | ready
    node: int = -1
    ready_at: int = 0
    resize_to: float | None = None
    resize_at: int = -1
    reserved: float = 0.0  # extra cores held on the node for a growing resize
    load_us: int = 0  # cold start paid once placed
    warm: bool = False  # ready as soon as placed (the initial plan)


@dataclass
class ActuatorStats:
    starts: int = 0
    resizes: int = 0
    recreates: int = 0
    over_capacity: int = 0  # plans asking more cores than the cluster has
    notes: list[str] = field(default_factory=list)


class SimActuator:
    """Applies plans to the data plane `dp` at the engine's current time (`now_us`)."""

    name = "sim"

    def __init__(
        self,
        dp: DataPlaneHooks,
        stages: list[tuple[str, list[VariantProfile]]],
        capacity: Capacity,
        policy: str,
        recreate: bool,
        resize_s: float | None,
    ) -> None:
        self.dp = dp
        self.stages = stages
        self.cap = capacity
        self.policy = policy
        self.recreate = recreate
        self.resize_s = resize_s
        self.free = [capacity.cores_per_node] * capacity.nodes
        self.reps: dict[int, SimReplica] = {}
        self.order: list[int] = []  # creation order, for pending placement
        self.next_rid = 0
        self.now = 0
        self.plan: Plan | None = None
        self.stats = ActuatorStats()
        self._cache: dict[str, Any] | None = None
        self._need_place = True  # cores freed or replicas added since the last placement
        self.warm_next = False
        """The next `apply` starts its replicas warm (the engine's first decision at t=0)."""

    # ---- Actuator contract --------------------------------------------------------------
    def current(self) -> Plan | None:
        return self.plan

    def capacity(self) -> Capacity:
        return self.cap

    def pending(self) -> Pending:
        starting: dict[str, int] = {}
        resizing: set[str] = set()
        for r in self.reps.values():
            name = self.stages[r.stage][0]
            if r.state != "ready":
                starting[name] = starting.get(name, 0) + 1
            if r.resize_to is not None:
                resizing.add(name)
        return Pending(starting_replicas=starting, resizing_stages=frozenset(resizing))

    def apply(self, plan: Plan, warm: bool = False) -> Actuation:
        """Move toward `plan` now; `warm` makes new replicas ready at once (initial plan)."""
        warm = warm or self.warm_next
        self._validate(plan)
        changed = plan != self.plan
        act = Actuation(plan=plan, requested_at=self.now / US, changed=changed)
        if not changed:
            return act
        self._cache = None
        for s, (sname, variants) in enumerate(self.stages):
            sp = plan.stage(sname) if sname in {x.stage for x in plan.stages} else None
            for li, vp in enumerate(variants):
                if sp is None:
                    n, c, b, w = 0, 1.0, 1, 0.0
                else:
                    n, c = sp.replicas_of(vp.name), sp.cores_of(vp.name)
                    b = sp.batch
                    w = next((v.weight for v in sp.variants if v.name == vp.name), 0.0)
                self.dp.set_lane(s, li, b, w)
                self._converge(s, li, n, c, vp, warm)
            set_head = getattr(self.dp, "set_head", None)
            if sp is not None and sp.variants and set_head is not None:
                first = sp.variants[0].name
                names = [v.name for v in variants]
                if first in names:
                    set_head(s, names.index(first), sp.cores_of(first))
        self.plan = plan
        self._place()
        self._cache = None
        return act

    # ---- internals ----------------------------------------------------------------------
    def _validate(self, plan: Plan) -> None:
        names = {n: {v.name for v in vs} for n, vs in self.stages}
        for sp in plan.stages:
            if sp.stage not in names:
                raise TidalError(
                    f"policy {self.policy!r} planned unknown stage {sp.stage!r}; "
                    f"pipeline has {sorted(names)}"
                )
            for v in sp.variants:
                if v.name not in names[sp.stage]:
                    raise TidalError(
                        f"policy {self.policy!r} planned variant {v.name!r} for stage "
                        f"{sp.stage!r}; candidates are {sorted(names[sp.stage])}"
                    )
                c = sp.cores_of(v.name)
                if sp.replicas_of(v.name) > 0 and c > self.cap.cores_per_node + EPS:
                    raise TidalError(
                        f"plan can never fit: policy {self.policy!r} wants {c} cores per "
                        f"replica of {v.name!r} (stage {sp.stage!r}) but nodes have "
                        f"{self.cap.cores_per_node} cores"
                    )
        if plan.total_cores > self.cap.total_cores + EPS:
            # Kubernetes semantics: the replicas that do not fit stay pending.
            self.stats.over_capacity += 1

    def _lane_reps(self, s: int, li: int) -> list[SimReplica]:
        return [r for r in self.reps.values() if r.stage == s and r.lane == li]

    def _converge(self, s: int, li: int, n: int, c: float, vp: VariantProfile, warm: bool) -> None:
        mine = self._lane_reps(s, li)
        # Resize (in place) or recreate replicas whose size differs.
        for r in mine:
            target = r.resize_to if r.resize_to is not None else r.cores
            if abs(target - c) < EPS:
                continue
            if r.state == "pending":
                r.cores = c
            elif self.recreate and r.state == "ready" and not warm:
                self._remove(r)
                self.stats.recreates += 1
            elif r.state == "starting" or warm:
                self._unreserve(r)
                if r.node >= 0:
                    self.free[r.node] += r.cores
                    r.node, r.state = -1, "pending"
                r.cores, r.warm = c, warm
            else:
                self._unreserve(r)
                r.resize_to = c
                delay = vp.resize_s if self.resize_s is None else self.resize_s
                r.resize_at = self.now + int(round(delay * US))
        mine = self._lane_reps(s, li)
        if len(mine) < n:
            for _ in range(n - len(mine)):
                rid = self.next_rid
                self.next_rid += 1
                r = SimReplica(rid, s, li, c, load_us=int(round(vp.load_time_s * US)), warm=warm)
                self.reps[rid] = r
                self.order.append(rid)
        elif len(mine) > n:
            rank = {"pending": 0, "starting": 1, "ready": 2}
            victims = sorted(mine, key=lambda r: (rank[r.state], -r.rid))[: len(mine) - n]
            for r in victims:
                self._remove(r)

    def _unreserve(self, r: SimReplica) -> None:
        self._need_place = True
        if r.reserved and r.node >= 0:
            self.free[r.node] += r.reserved
        r.reserved = 0.0

    def _remove(self, r: SimReplica) -> None:
        self._unreserve(r)  # also flags a placement pass
        if r.node >= 0:
            self.free[r.node] += r.cores
        if r.state == "ready":
            self.dp.remove_replica(r.rid)
        del self.reps[r.rid]
        self.order.remove(r.rid)

    def _place(self) -> None:
        self._need_place = False
        for rid in self.order:
            r = self.reps[rid]
            if r.state != "pending":
                continue
            for i, f in enumerate(self.free):
                if r.cores <= f + EPS:
                    self.free[i] = f - r.cores
                    r.node = i
                    if r.warm:
                        self._ready(r)
                    else:
                        r.state = "starting"
                        r.ready_at = self.now + r.load_us
                        self.stats.starts += 1
                    break
        # Growing in-place resizes reserve room on their node when they can.
        for r in self.reps.values():
            if r.resize_to is not None and r.state == "ready" and not r.reserved:
                grow = r.resize_to - r.cores
                if grow > EPS and self.free[r.node] + EPS >= grow:
                    self.free[r.node] -= grow
                    r.reserved = grow

    def _ready(self, r: SimReplica) -> None:
        r.state = "ready"
        self.dp.add_replica(r.rid, r.stage, r.lane, r.cores)

    def next_event(self) -> int:
        """The next time (us) a replica becomes ready or a resize takes effect (or -1)."""
        return int(self._summary()["due"])

    def _resize_ok(self, r: SimReplica) -> bool:
        assert r.resize_to is not None
        return r.resize_to <= r.cores + EPS or r.reserved > 0

    def advance(self, now: int) -> bool:
        """Apply what is due at `now` (readiness, resizes, placements); True if anything
        changed."""
        self.now = now
        summ = self._summary()
        if not summ["busy"] and (summ["due"] < 0 or summ["due"] > now):
            return False
        self._cache = None
        changed = False
        for r in list(self.reps.values()):
            if r.state == "starting" and r.ready_at <= now:
                self._ready(r)
                changed = True
            elif (
                r.resize_to is not None
                and r.state == "ready"
                and r.resize_at <= now
                and self._resize_ok(r)
            ):
                self.free[r.node] += r.cores + r.reserved - r.resize_to
                r.cores, r.resize_to, r.reserved = r.resize_to, None, 0.0
                self.dp.resize_replica(r.rid, r.cores)
                self.stats.resizes += 1
                changed = True
        if self._need_place or changed:
            before = sum(1 for r in self.reps.values() if r.state == "pending")
            self._place()
            after = sum(1 for r in self.reps.values() if r.state == "pending")
            changed = changed or before != after
        return changed

    def _summary(self) -> dict[str, Any]:
        if self._cache is None:
            n_st = len(self.stages)
            rc = [0.0] * n_st
            rn = [0] * n_st
            cores = 0.0
            placed = 0
            due = -1
            busy = False
            for r in self.reps.values():
                if r.state != "pending":
                    cores += r.cores + r.reserved
                    placed += 1
                else:
                    busy = True
                if r.state == "ready":
                    rc[r.stage] += r.cores
                    rn[r.stage] += 1
                t = -1
                if r.state == "starting":
                    t = r.ready_at
                elif r.resize_to is not None:
                    busy = True
                    if r.state == "ready" and self._resize_ok(r):
                        t = r.resize_at
                if t >= 0 and (due < 0 or t < due):
                    due = t
            self._cache = {
                "rc": rc,
                "rn": rn,
                "cores": cores,
                "placed": placed,
                "due": due,
                "busy": busy,
            }
        return self._cache

    def allocated(self) -> tuple[float, int]:
        """Cores held (starting + ready replicas, incl. reserved growth) and replicas placed."""
        c = self._summary()
        return c["cores"], c["placed"]

    def ready_cores(self, stage: int) -> float:
        return float(self._summary()["rc"][stage])

    def ready_count(self, stage: int) -> int:
        return int(self._summary()["rn"][stage])
