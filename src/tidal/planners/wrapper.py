"""`Governed`: the one wrapper that applies bounds, decision intervals, cool-downs,
stabilization windows, scale delays and scale-up limits around any planner.

Usage (simulator, live controller, Ray)::

    planner = tidal.planners.Governed(tidal.planners.create("hpa"), bounds=Bounds(max_replicas=8))
    plan, state = planner.plan(ctx)          # call it every tick; keep `state` for the next call

Contract:
- `Governed` is itself a pure Planner (``name``, ``interval_s``, ``resize_mode``,
  ``plan(ctx) -> (Plan, state)``); `ctx.state` is the `GovernedState` it returned last time
  (None at first). The inner planner sees its own state only.
- Between decisions (``now - last_decision < interval_s``) it returns the plan in force
  (``ctx.current``, else its last plan) without calling the inner planner.
- Windows, delays, limits and cool-downs act on replica counts of single-variant stages (as
  Kubernetes' HPA and Ray Serve do). Bounds clamp replicas, cores per replica and batch of every
  stage. Cores and batch otherwise pass through: vertical changes are fast and policies that
  make them (Sponge, Themis, VPA) decide their own pace.
- Kubernetes stabilization: the replica count is ``max`` of the recommendations of the last
  ``scale_down_stabilization_s`` when scaling down and ``min`` of those of the last
  ``scale_up_stabilization_s`` when scaling up; else unchanged.
- Ray Serve delays: a scale-up (down) is applied only once every decision for at least
  ``upscale_delay_s`` (``downscale_delay_s``) wanted it; then the newest recommendation wins.
- Defaults come from the inner planner's ``governance`` attribute (e.g. HPA: 300 s scale-down
  window, +max(4 pods, 100%) per 15 s), overridable with ``governance=``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from tidal.core.errors import TidalError
from tidal.core.plan import Plan, StagePlan
from tidal.planners.base import PlanContext, Planner, resize_mode
from tidal.planners.common import fits


@dataclass(frozen=True)
class Bounds:
    """Hard limits applied to every stage of every plan."""

    min_replicas: int = 1
    max_replicas: int | None = None
    min_cores: float | None = None
    max_cores: float | None = None
    max_batch: int | None = None

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise TidalError(f"bounds: min_replicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise TidalError(
                f"bounds: max_replicas ({self.max_replicas}) must be >= min_replicas "
                f"({self.min_replicas})"
            )
        if self.min_cores is not None and self.min_cores <= 0:
            raise TidalError(f"bounds: min_cores must be > 0, got {self.min_cores}")
        if (
            self.max_cores is not None
            and self.min_cores is not None
            and self.max_cores < self.min_cores
        ):
            raise TidalError(
                f"bounds: max_cores ({self.max_cores}) must be >= min_cores ({self.min_cores})"
            )
        if self.max_batch is not None and self.max_batch < 1:
            raise TidalError(f"bounds: max_batch must be >= 1, got {self.max_batch}")

    def clamp(self, sp: StagePlan) -> StagePlan:
        """`sp` with replicas, cores and batch inside the bounds (per variant too, when a
        variant sets its own replicas/cores)."""
        upd: dict[str, Any] = {}
        r = max(sp.replicas, self.min_replicas)
        if self.max_replicas is not None:
            r = min(r, self.max_replicas)
        if r != sp.replicas:
            upd["replicas"] = r
        c = sp.cores
        if self.min_cores is not None:
            c = max(c, self.min_cores)
        if self.max_cores is not None:
            c = min(c, self.max_cores)
        if c != sp.cores:
            upd["cores"] = c
        if self.max_batch is not None and sp.batch > self.max_batch:
            upd["batch"] = self.max_batch
        if any(v.replicas is not None or v.cores is not None for v in sp.variants):
            # multi-variant stages (InfAdapter): the same bounds per variant
            vs = []
            for v in sp.variants:
                vr = v.replicas
                if vr is not None and self.max_replicas is not None:
                    vr = min(vr, self.max_replicas)
                vc = v.cores
                if vc is not None and self.max_cores is not None:
                    vc = min(vc, self.max_cores)
                if vc is not None and self.min_cores is not None:
                    vc = max(vc, self.min_cores)
                vs.append(v.model_copy(update={"replicas": vr, "cores": vc}))
            upd["variants"] = tuple(vs)
        return sp.model_copy(update=upd) if upd else sp


@dataclass(frozen=True)
class Governance:
    """Pace of decisions. All durations in seconds; 0 / None disables a rule."""

    interval_s: float | None = None
    scale_up_stabilization_s: float = 0.0
    scale_down_stabilization_s: float = 0.0
    upscale_delay_s: float = 0.0
    downscale_delay_s: float = 0.0
    scale_up_limit_pods: int | None = None
    scale_up_limit_percent: float | None = None
    cooldown_up_s: float = 0.0
    cooldown_down_s: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None and v < 0:
                raise TidalError(f"governance: {f.name} must be >= 0, got {v}")


@dataclass(frozen=True)
class GovernedState:
    """The wrapper's state between calls (treat as opaque)."""

    inner: Any = None
    last_decision: float | None = None
    last_plan: Plan | None = None
    recs: dict[str, tuple[tuple[float, int], ...]] = field(default_factory=dict)
    up_since: dict[str, float] = field(default_factory=dict)
    down_since: dict[str, float] = field(default_factory=dict)
    last_up: dict[str, float] = field(default_factory=dict)
    last_down: dict[str, float] = field(default_factory=dict)


class Governed:
    """Wrap `planner` with `bounds` and `governance` (default: the planner's own)."""

    def __init__(
        self,
        planner: Planner,
        bounds: Bounds | None = None,
        governance: Governance | None = None,
    ) -> None:
        self.inner = planner
        self.bounds = bounds or Bounds()
        self.governance = governance or getattr(planner, "governance", None) or Governance()
        self.name = planner.name
        gi = self.governance.interval_s
        self.interval_s = float(planner.interval_s if gi is None else gi)
        self.resize_mode = resize_mode(planner)

    def plan(self, ctx: PlanContext) -> tuple[Plan, GovernedState]:
        st = ctx.state if isinstance(ctx.state, GovernedState) else GovernedState()
        in_force = ctx.current if ctx.current is not None else st.last_plan
        if (
            in_force is not None
            and st.last_decision is not None
            and ctx.now - st.last_decision < self.interval_s - 1e-9
        ):
            return in_force, st
        raw, inner_state = self.inner.plan(dataclasses.replace(ctx, state=st.inner))
        new, gst = _Apply(self.bounds, self.governance, st, ctx).run(raw)
        if not fits(new, ctx.capacity):
            reason = (
                f"plan needs {new.total_cores:g} cores in replicas that do not fit "
                f"{ctx.capacity.nodes} node(s) x {ctx.capacity.cores_per_node:g} cores"
            )
            new = new.model_copy(
                update={
                    "feasible": False,
                    "reason": "; ".join(x for x in (new.reason, reason) if x),
                }
            )
        st2 = dataclasses.replace(gst, inner=inner_state, last_decision=ctx.now, last_plan=new)
        return new, st2


class _Apply:
    """One governance pass (kept separate so `Governed.plan` stays readable)."""

    def __init__(
        self, bounds: Bounds, gov: Governance, st: GovernedState, ctx: PlanContext
    ) -> None:
        self.b, self.g, self.ctx = bounds, gov, ctx
        self.recs = dict(st.recs)
        self.up_since, self.down_since = dict(st.up_since), dict(st.down_since)
        self.last_up, self.last_down = dict(st.last_up), dict(st.last_down)
        self.st = st

    def run(self, raw: Plan) -> tuple[Plan, GovernedState]:
        stages = tuple(self._stage(self.b.clamp(sp)) for sp in raw.stages)
        gst = dataclasses.replace(
            self.st,
            recs=self.recs,
            up_since=self.up_since,
            down_since=self.down_since,
            last_up=self.last_up,
            last_down=self.last_down,
        )
        return raw.model_copy(update={"stages": stages}), gst

    def _stage(self, sp: StagePlan) -> StagePlan:
        now, g, name = self.ctx.now, self.g, sp.stage
        cur_sp = None
        if self.ctx.current is not None:
            cur_sp = next((s for s in self.ctx.current.stages if s.stage == name), None)
        single = len(sp.variants) == 1 and sp.variants[0].replicas is None
        if cur_sp is None or not single:
            return sp
        cur, rec = cur_sp.total_replicas, sp.replicas
        window = max(g.scale_up_stabilization_s, g.scale_down_stabilization_s)
        hist = tuple((t, r) for t, r in self.recs.get(name, ()) if now - t <= window + 1e-9)
        hist += ((now, rec),)
        self.recs[name] = hist
        # Kubernetes keeps recommendations strictly newer than now - window (plus this one).
        up_rec = min(r for t, r in hist if t == now or now - t < g.scale_up_stabilization_s)
        down_rec = max(r for t, r in hist if t == now or now - t < g.scale_down_stabilization_s)
        desired = cur
        if cur < up_rec:
            desired = up_rec
        elif cur > down_rec:
            desired = down_rec
        # Ray Serve style delays: the direction must persist for the whole delay.
        if desired > cur:
            self.down_since.pop(name, None)
            since = self.up_since.setdefault(name, now)
            if now - since < g.upscale_delay_s - 1e-9:
                desired = cur
        elif desired < cur:
            self.up_since.pop(name, None)
            since = self.down_since.setdefault(name, now)
            if now - since < g.downscale_delay_s - 1e-9:
                desired = cur
        else:
            self.up_since.pop(name, None)
            self.down_since.pop(name, None)
        if desired > cur:
            limits = []
            if g.scale_up_limit_pods is not None:
                limits.append(cur + g.scale_up_limit_pods)
            if g.scale_up_limit_percent is not None:
                limits.append(math.ceil(cur * (1 + g.scale_up_limit_percent / 100.0)))
            if limits:
                desired = min(desired, max(limits))
            if now - self.last_up.get(name, -math.inf) < g.cooldown_up_s - 1e-9:
                desired = cur
        elif desired < cur and now - self.last_down.get(name, -math.inf) < g.cooldown_down_s:
            desired = cur
        if desired > cur:
            self.last_up[name] = now
            self.up_since.pop(name, None)
        elif desired < cur:
            self.last_down[name] = now
            self.down_since.pop(name, None)
        return self.b.clamp(sp.model_copy(update={"replicas": desired}))
