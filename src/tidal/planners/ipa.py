"""`ipa`: accuracy/cost trade-off over model variants of a pipeline (IPA, arXiv 2308.12871).

Per stage s choose one variant m and one batch beta (powers of two <= 16); replicas follow:
``n = ceil(lambda / h_{s,m,beta})``. MILP (HiGHS via `tidal.planners.solver`)::

    max  alpha*Acc - beta_c * sum_s n_s*cores(s,m) - gamma * sum_s beta_s
    s.t. one (m, beta) per stage;  sum_s (l99_{s,m,beta} + 1000*(beta-1)/lambda) <= SLA;
         sum_s n_s*cores <= cluster cores;  n_s <= max_replicas

Faithful: variables, objective and its defaults (alpha=2, beta_c=1, gamma=1e-6), the SLA
constraint, powers-of-two batches, interval 10 s, LSTM predictor (IPA setting of
`tidal.forecast`, max-of-window until enough history: the controller's job).
Fixed: the queue term uses beta, ``(beta-1)/lambda`` (the prototype multiplies by the binary
indicator instead). Replicas are precomputed per (s, m, beta) as the fewest that carry lambda
rather than being a free integer: the objective penalizes cores, so the optimum is the same and
the model has binaries only.
Accuracy: stage accuracies normalized by the stage's best candidate; ``Acc`` is their sum or
their product. The product is linearized exactly (not via logs, which would change the
trade-off with cost): ``P_1 = sum_k a_1k x_1k``, ``P_s = sum_k a_sk z_sk`` with
``z_sk = P_{s-1} * x_sk`` by the exact binary-times-bounded-continuous constraints
``z <= x, z <= P, z >= P - (1 - x)``.
Cores per replica: fixed per variant, as IPA sizes each variant's container once, and taken
from the profile (reconstructed rule, `cores_per_replica=None`): the fewest cores among
1, 2, 4, ... up to the node whose batch-1 p99 is at most half the stage's share of the SLA
(larger models get more cores; earlier every variant got 1 core, so a larger model was never
worth it above ~10 req/s). `cores_per_replica=C` fixes C for every variant.
Headroom (project default; the paper sizes at utilisation 1): ``n = ceil(lambda /
(utilization*h))`` with `utilization` 0.8.
Solve: bounded by `node_limit` (deterministic); a stopped search says so in the reason.
Infeasible: the fastest option per stage, flagged.
`fixed_replicas` turns this into RIM (IPA's baseline, `tidal.planners.baselines.rim`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from tidal.core.errors import TidalError
from tidal.core.plan import Plan
from tidal.core.profile import VariantProfile
from tidal.planners.base import PlanContext, PlannerOptions, StageCandidates, register
from tidal.planners.common import (
    BATCHES,
    check_context,
    replicas_needed,
    stage_latency_ms,
    stage_plan,
)
from tidal.planners.solver import Model


@dataclass(frozen=True)
class IpaOption:
    """One (variant, batch) of one stage with its replicas, cores, latency and accuracy."""

    variant: VariantProfile
    batch: int
    replicas: int
    cores: float
    latency_ms: float
    acc_norm: float

    @property
    def total_cores(self) -> float:
        return self.replicas * self.cores


def ipa_objective(
    options: list[IpaOption], alpha: float, beta_c: float, gamma: float, combine: str
) -> float:
    """The objective of one option per stage (also used by the brute-force tests)."""
    accs = [o.acc_norm for o in options]
    acc = sum(accs) if combine == "sum" else math.prod(accs)
    return (
        alpha * acc
        - beta_c * sum(o.total_cores for o in options)
        - gamma * sum(o.batch for o in options)
    )


def prune(options: list[IpaOption]) -> list[IpaOption]:
    """Drop options dominated within their stage (no faster, cheaper, smaller-batch and at
    least as accurate alternative exists). Exact for sum and product: accuracies are >= 0."""

    def dominates(p: IpaOption, o: IpaOption) -> bool:
        return (
            p.latency_ms <= o.latency_ms
            and p.total_cores <= o.total_cores
            and p.batch <= o.batch
            and p.acc_norm >= o.acc_norm
        )

    kept: list[IpaOption] = []
    for i, o in enumerate(options):
        # dominated by a different option (ties: the earlier one is kept)
        if not any(
            dominates(p, o) and (not dominates(o, p) or j < i)
            for j, p in enumerate(options)
            if j != i
        ):
            kept.append(o)
    return kept


class IpaCommonOptions(PlannerOptions):
    """Options of `ipa` (defaults: IPA's paper and prototype unless stated)."""

    alpha: float = Field(2.0, ge=0, le=1e6, description="Weight of accuracy (paper 2).")
    beta_c: float = Field(1.0, ge=0, le=1e6, description="Weight of cores (paper 1).")
    gamma: float = Field(1e-6, ge=0, le=1e3, description="Weight of batch sizes (paper 1e-6).")
    accuracy: Literal["sum", "product"] = Field(
        "product", description="How stage accuracies combine."
    )
    cores_per_replica: float | None = Field(
        None, gt=0, le=1024, description="Cores of every variant; None: per variant."
    )
    max_replicas: int = Field(64, ge=1, le=10**4, description="Replicas per stage at most.")
    batches: tuple[int, ...] = Field(
        BATCHES, min_length=1, description="Batch sizes considered (paper: powers of two)."
    )
    utilization: float = Field(
        0.8, gt=0, le=1, description="Target utilisation (headroom); project default 0.8."
    )
    node_limit: int = Field(
        5000, ge=1, le=10**7, description="Branch-and-bound node limit of the MILP."
    )


class IpaOptions(IpaCommonOptions):
    """Options of `ipa` (defaults: IPA's paper and prototype unless stated)."""

    fixed_replicas: int | None = Field(
        None, ge=1, le=10**4, description="Fix replicas per stage (RIM)."
    )


def variant_cores(v: VariantProfile, stage_sla_ms: float, node_cores: float) -> float:
    """IPA's per-variant container size (reconstructed): the fewest cores among 1, 2, 4, ...
    (up to the node, the profile's `max_useful_cores` and its measured range) whose batch-1 p99
    is at most half the stage's SLA share; the largest such size if none is."""
    top = node_cores if v.max_useful_cores is None else min(node_cores, v.max_useful_cores)
    bounds = v.core_bounds()  # never outside the cores the profile measured
    lo = 1.0
    if bounds is not None:
        top = min(top, bounds[1])
        while lo < bounds[0] - 1e-9 and lo * 2 <= top + 1e-9:
            lo *= 2
    c = lo
    while c * 2 <= top + 1e-9 and v.p99_ms(1, c) > 0.5 * stage_sla_ms:
        c *= 2
    return min(c, top) if top >= 1 else top


@register("ipa")
class IPA:
    """IPA's MILP planner."""

    name = "ipa"
    interval_s = 10.0
    Options = IpaOptions

    def __init__(
        self,
        alpha: float = 2.0,
        beta_c: float = 1.0,
        gamma: float = 1e-6,
        accuracy: str = "product",
        cores_per_replica: float | None = None,
        max_replicas: int = 64,
        batches: tuple[int, ...] = BATCHES,
        fixed_replicas: int | None = None,
        utilization: float = 0.8,
        node_limit: int = 5000,
    ) -> None:
        if accuracy not in ("sum", "product"):
            raise TidalError(f"ipa: accuracy must be 'sum' or 'product', got {accuracy!r}")
        if cores_per_replica is not None and cores_per_replica <= 0:
            raise TidalError(f"ipa: cores_per_replica must be > 0, got {cores_per_replica}")
        self.alpha, self.beta_c, self.gamma, self.accuracy = alpha, beta_c, gamma, accuracy
        self.cores, self.max_replicas, self.batches = cores_per_replica, max_replicas, batches
        self.fixed_replicas, self.node_limit = fixed_replicas, node_limit
        self.utilization = utilization

    def cores_of(self, v: VariantProfile, ctx: PlanContext) -> float:
        """Cores per replica of variant `v` (fixed, or from its profile)."""
        cpn = ctx.capacity.cores_per_node
        if self.cores is not None:
            return min(self.cores, cpn)
        return variant_cores(v, ctx.slo_ms / len(ctx.stages), cpn)

    def options(self, st: StageCandidates, ctx: PlanContext) -> list[IpaOption]:
        """Every (variant, batch) of the stage that carries the load within the bounds."""
        lam = ctx.load
        best = max(v.accuracy for v in st.variants) or 1.0
        out = []
        for v in st.variants:
            c = self.cores_of(v, ctx)
            slots = ctx.capacity.nodes * int(ctx.capacity.cores_per_node // c + 1e-9)
            for b in self.batches:
                n = replicas_needed(v, b, c, lam / self.utilization)
                if self.fixed_replicas is not None:
                    if n > self.fixed_replicas:
                        continue
                    n = self.fixed_replicas
                lat = stage_latency_ms(v, b, c, lam)
                # an option slower than the whole SLA alone can never be chosen
                if n <= min(self.max_replicas, slots) and lat <= ctx.slo_ms:
                    out.append(IpaOption(v, b, n, c, lat, v.accuracy / best))
        return prune(out)

    def build(self, opts: list[list[IpaOption]], ctx: PlanContext) -> tuple[Model, list[list[int]]]:
        """The MILP; returns it and the x variable of every option."""
        m = Model("ipa", sense="max")
        xs: list[list[int]] = []
        for s, so in enumerate(opts):
            row = [
                m.var(
                    f"x[{s},{o.variant.name},b{o.batch}]",
                    binary=True,
                    obj=-self.beta_c * o.total_cores
                    - self.gamma * o.batch
                    + (self.alpha * o.acc_norm if self.accuracy == "sum" else 0.0),
                )
                for o in so
            ]
            m.constrain({x: 1.0 for x in row}, eq=1.0, name=f"one option at stage {s}")
            xs.append(row)
        lat = {
            x: o.latency_ms
            for row, so in zip(xs, opts, strict=True)
            for x, o in zip(row, so, strict=True)
        }
        m.constrain(lat, ub=ctx.slo_ms, name="end-to-end SLA")
        cores = {
            x: o.total_cores
            for row, so in zip(xs, opts, strict=True)
            for x, o in zip(row, so, strict=True)
        }
        m.constrain(cores, ub=ctx.capacity.total_cores, name="cluster cores")
        if self.accuracy == "product":
            p_prev = m.var("P[0]", lb=0.0, ub=1.0, obj=self.alpha if len(opts) == 1 else 0.0)
            m.constrain(
                {p_prev: -1.0, **{x: o.acc_norm for x, o in zip(xs[0], opts[0], strict=True)}},
                eq=0.0,
                name="P[0]",
            )
            for s in range(1, len(opts)):
                last = s == len(opts) - 1
                p = m.var(f"P[{s}]", lb=0.0, ub=1.0, obj=self.alpha if last else 0.0)
                link: dict[int, float] = {p: -1.0}
                for x, o in zip(xs[s], opts[s], strict=True):
                    z = m.var(f"z[{s},{m.names[x]}]", lb=0.0, ub=1.0)
                    m.constrain({z: 1.0, x: -1.0}, ub=0.0, name="z<=x")
                    m.constrain({z: 1.0, p_prev: -1.0}, ub=0.0, name="z<=P")
                    m.constrain({z: 1.0, p_prev: -1.0, x: -1.0}, lb=-1.0, name="z>=P-(1-x)")
                    link[z] = o.acc_norm
                m.constrain(link, eq=0.0, name=f"P[{s}]")
                # valid since exactly one x is 1 (sum_k z = P_{s-1}); tightens the relaxation
                m.constrain(
                    {p_prev: -1.0, **{z: 1.0 for z in link if z != p}}, eq=0.0, name="sum z"
                )
                p_prev = p
        return m, xs

    def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
        check_context(ctx)
        opts = [self.options(st, ctx) for st in ctx.stages]
        if all(opts):
            model, xs = self.build(opts, ctx)
            sol = model.solve(self.node_limit)
            if sol.ok:
                picked = [
                    next(o for x, o in zip(row, so, strict=True) if sol.on(x))
                    for row, so in zip(xs, opts, strict=True)
                ]
                plan = self._plan(ctx, picked)
                if sol.hit_limit:  # feasible, but the search stopped: say so
                    plan = plan.model_copy(
                        update={"reason": f"hit_limit: node limit {self.node_limit}"}
                    )
                return plan, ctx.state
            reason = (
                f"no variant/batch per stage meets the {ctx.slo_ms:g} ms SLA within "
                f"{ctx.capacity.total_cores:g} cluster cores at "
                f"{ctx.load:g} req/s ({sol.message})"
            )
        else:
            empty = [st.stage for st, so in zip(ctx.stages, opts, strict=True) if not so]
            reason = (
                f"stages {empty} cannot carry {ctx.load:g} req/s within "
                f"{self.max_replicas} replicas"
            )
        return self._best_effort(ctx, opts, reason), ctx.state

    def _plan(self, ctx: PlanContext, picked: list[IpaOption], reason: str = "") -> Plan:
        return Plan(
            stages=tuple(
                stage_plan(st.stage, o.variant.name, o.replicas, o.cores, o.batch)
                for st, o in zip(ctx.stages, picked, strict=True)
            ),
            feasible=not reason,
            reason=reason,
        )

    def _best_effort(self, ctx: PlanContext, opts: list[list[IpaOption]], reason: str) -> Plan:
        picked = []
        for st, so in zip(ctx.stages, opts, strict=True):
            if so:
                picked.append(min(so, key=lambda o: (o.latency_ms, o.total_cores)))
            else:
                v = st.variants[0]
                c = self.cores_of(v, ctx)
                n = self.fixed_replicas or max(
                    1,
                    min(self.max_replicas, int(ctx.capacity.total_cores // (c * len(ctx.stages)))),
                )
                picked.append(IpaOption(v, 1, n, c, stage_latency_ms(v, 1, c, ctx.load), 0.0))
        return self._plan(ctx, picked, reason)
