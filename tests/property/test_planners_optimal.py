"""Themis, Sponge, IPA and InfAdapter against brute force on small random instances: the
objective of the returned plan equals the brute-force optimum, and every plan meets its own
constraints."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidal.core.plan import Plan, StagePlan, VariantWeight
from tidal.core.profile import CapacityPoint, LatencyFit, VariantProfile
from tidal.planners import Capacity, PlanContext, StageCandidates, create
from tidal.planners.dp import budget_units, units
from tidal.planners.infadapter import (
    Choice,
    InfAdapter,
    cap,
    capacity_line,
    infadapter_objective,
)
from tidal.planners.ipa import IpaOption, ipa_objective
from tidal.planners.themis import amdahl_cap

BATCHES = (1, 2, 4, 8, 16)
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


@st.composite
def variant(draw: st.DrawFn, name: str) -> VariantProfile:
    return VariantProfile(
        name=name,
        accuracy=draw(st.floats(0.3, 0.95)),
        load_time_s=draw(st.floats(0.5, 10.0)),
        fit=LatencyFit(
            gamma=draw(st.floats(1.0, 40.0)),
            delta=draw(st.floats(0.0, 8.0)),
            epsilon=draw(st.floats(0.0, 60.0)),
            eta=draw(st.floats(0.1, 5.0)),
            p99_ratio=draw(st.floats(1.0, 1.5)),
        ),
    )


def ctx_of(stages: list[tuple[VariantProfile, ...]], lam: float, slo: float, cap_: Capacity):
    return PlanContext(
        now=0.0,
        rate_history=(lam,) * 5,
        forecast=lam,
        stages=tuple(StageCandidates(f"s{i}", vs) for i, vs in enumerate(stages)),
        current=None,
        slo_ms=slo,
        capacity=cap_,
    )


def lat(v: VariantProfile, b: int, c: float, lam: float) -> float:
    q = 0.0 if b == 1 else (math.inf if lam <= 0 else 1000.0 * (b - 1) / lam)
    return v.fit.latency_ms(b, c) * v.fit.p99_ratio + q


def thr(v: VariantProfile, b: int, c: float) -> float:
    return b * 1000.0 / v.fit.latency_ms(b, c)


# ---------------------------------------------------------------- themis


@SETTINGS
@given(
    data=st.data(),
    n_stages=st.integers(1, 3),
    lam=st.floats(0.0, 120.0),
    slo=st.floats(60.0, 1500.0),
    nodes=st.integers(1, 3),
    cpn=st.sampled_from([2.0, 4.0]),
)
def test_themis_matches_brute_force(data, n_stages, lam, slo, nodes, cpn) -> None:
    stages: list[tuple[VariantProfile, ...]] = [
        (data.draw(variant(f"v{i}")),) for i in range(n_stages)
    ]
    capacity = Capacity(nodes, cpn)
    ctx = ctx_of(stages, lam, slo, capacity)
    planner = create("themis", resolution_ms=slo / 200, utilization=1.0)
    plan, _ = planner.plan(ctx)
    res = slo / 200
    per_stage = []
    for (v,) in stages:
        grid = [0.5 * k for k in range(1, int(amdahl_cap(v, capacity) / 0.5 + 1e-9) + 1)]
        opts = []
        for c in grid:
            slots = nodes * int(cpn // c)
            for b in BATCHES:
                for n in range(1, slots + 1):
                    if n * thr(v, b, c) >= lam - 1e-9 and math.isfinite(lat(v, b, c, lam)):
                        opts.append((units(lat(v, b, c, lam), res), n * c))
                        break  # more replicas cost more and change nothing else
        per_stage.append(opts)
    best = math.inf
    for combo in itertools.product(*per_stage):
        if sum(u for u, _ in combo) <= budget_units(slo, res):
            best = min(best, sum(c for _, c in combo))
    if math.isinf(best):
        assert not plan.feasible and plan.reason
        return
    if not plan.feasible:  # optimum exists but does not fit the nodes jointly
        assert "does not fit" in plan.reason
        return
    assert plan.total_cores == best or math.isclose(plan.total_cores, best)
    total = 0.0
    for sp, (v,) in zip(plan.stages, stages, strict=True):
        assert sp.replicas * thr(v, sp.batch, sp.cores) >= lam - 1e-6
        assert sp.cores <= amdahl_cap(v, capacity) + 1e-9
        total += lat(v, sp.batch, sp.cores, lam)
    assert total <= slo + 1e-6


# ---------------------------------------------------------------- sponge


@SETTINGS
@given(
    v=variant("m"),
    lam=st.floats(0.0, 60.0),
    slo=st.floats(100.0, 1500.0),
    budgets=st.lists(st.floats(20.0, 1500.0), max_size=30),
    cpn=st.sampled_from([2.0, 4.0, 8.0]),
)
def test_sponge_ip_matches_enumeration(v, lam, slo, budgets, cpn) -> None:
    sp_planner = create("sponge", max_cores=8, max_batch=8, utilization=1.0, use_solver=True)
    ctx = ctx_of([(v,)], lam, slo, Capacity(1, cpn))
    ctx = PlanContext(**{**ctx.__dict__, "budgets_ms": tuple(budgets)})
    plan, _ = sp_planner.plan(ctx)
    fast, _ = create("sponge", max_cores=8, max_batch=8, utilization=1.0).plan(ctx)
    assert fast == plan  # the argmin after the exact presolve is the IP's optimum
    eb = sorted(budgets)
    found = None
    for c in range(1, int(min(8, cpn)) + 1):  # fewest cores first, then smallest batch
        for b in range(1, 9):
            ok = thr(v, b, c) >= lam - 1e-9
            ok = ok and lat(v, b, c, lam) <= 0.9 * slo + 1e-9
            for i, bud in enumerate(eb):
                finish = (i // b + 1) * v.fit.latency_ms(b, c) * v.fit.p99_ratio
                ok = ok and finish <= 0.9 * bud + 1e-9
            if ok:
                found = (c, b)
                break
        if found:
            break
    s = plan.stages[0]
    if found is None:
        assert not plan.feasible and s.cores == int(min(8, cpn))
    else:
        assert plan.feasible
        assert (s.cores, s.batch) == found


# ---------------------------------------------------------------- ipa


@SETTINGS
@given(
    data=st.data(),
    n_stages=st.integers(1, 3),
    n_var=st.integers(1, 3),
    lam=st.floats(0.0, 80.0),
    slo=st.floats(80.0, 2000.0),
    combine=st.sampled_from(["sum", "product"]),
    total=st.sampled_from([4.0, 8.0, 16.0]),
)
def test_ipa_matches_brute_force(data, n_stages, n_var, lam, slo, combine, total) -> None:
    stages = [tuple(data.draw(variant(f"v{s}{i}")) for i in range(n_var)) for s in range(n_stages)]
    batches = (1, 2, 4)
    ctx = ctx_of(stages, lam, slo, Capacity(1, total))
    planner = create(
        "ipa",
        accuracy=combine,
        batches=batches,
        max_replicas=16,
        cores_per_replica=1.0,
        utilization=1.0,
    )
    plan, _ = planner.plan(ctx)
    per_stage = []
    for vs in stages:
        best_acc = max(v.accuracy for v in vs)
        opts = []
        for v in vs:
            for b in batches:
                n = max(1, math.ceil(lam / thr(v, b, 1.0) - 1e-9)) if lam > 0 else 1
                if n <= 16 and math.isfinite(lat(v, b, 1.0, lam)):
                    opts.append(IpaOption(v, b, n, 1.0, lat(v, b, 1.0, lam), v.accuracy / best_acc))
        per_stage.append(opts)
    best = -math.inf
    for combo in itertools.product(*per_stage):
        if sum(o.latency_ms for o in combo) <= slo and sum(o.total_cores for o in combo) <= total:
            best = max(best, ipa_objective(list(combo), 2.0, 1.0, 1e-6, combine))
    if math.isinf(best):
        assert not plan.feasible and plan.reason
        return
    assert plan.feasible, plan.reason
    picked = []
    for sp, opts in zip(plan.stages, per_stage, strict=True):
        o = next(o for o in opts if o.variant.name == sp.variants[0].name and o.batch == sp.batch)
        assert sp.replicas == o.replicas
        picked.append(o)
    assert ipa_objective(picked, 2.0, 1.0, 1e-6, combine) >= best - 1e-6
    assert sum(o.latency_ms for o in picked) <= slo + 1e-6
    assert sum(o.total_cores for o in picked) <= total + 1e-9


# ---------------------------------------------------------------- infadapter


@st.composite
def inf_variant(draw: st.DrawFn, name: str, sla: float) -> VariantProfile:
    v = draw(variant(name))
    a = draw(st.floats(2.0, 20.0))
    b = draw(st.floats(-10.0, 10.0))
    pts = [CapacityPoint(cores=c, rps=max(0.0, a * c + b), sla_ms=sla) for c in (2.0, 4.0, 6.0)]
    return v.model_copy(update={"capacity": pts})


@SETTINGS
@given(
    data=st.data(),
    n_stages=st.integers(1, 2),
    n_var=st.integers(1, 3),
    lam=st.floats(0.0, 100.0),
    budget=st.integers(2, 8),
)
def test_infadapter_matches_brute_force(data, n_stages, n_var, lam, budget) -> None:
    slo = 750.0 * n_stages
    stages = [
        tuple(data.draw(inf_variant(f"v{s}{i}", 750.0)) for i in range(n_var))
        for s in range(n_stages)
    ]
    ctx = ctx_of(stages, lam, slo, Capacity(2, 4.0))  # 8 cores: every budget fits
    planner = create("infadapter", budget=budget, max_cores=8, margin=0.0, capacity="measured")
    plan, _ = planner.plan(ctx)
    ks = list(range(2, budget + 1))
    lines = [[capacity_line(v, ks, 750.0) for v in vs] for vs in stages]

    def stage_configs(vs, ls):
        for cores in itertools.product([0, *ks], repeat=len(vs)):
            if sum(cores) == 0 or sum(cores) > budget:
                continue
            caps = [cap(ln, k) for ln, k in zip(ls, cores, strict=True)]
            if any(k > 0 and c < 0 for k, c in zip(cores, caps, strict=True)):
                continue
            remaining, share = 1.0, {}  # fill the most accurate variants first
            order = sorted(range(len(vs)), key=lambda i: -vs[i].accuracy)
            for i in order:
                if cores[i] > 0:
                    share[vs[i].name] = min(remaining, caps[i] / lam) if lam > 0 else remaining
                    remaining -= share[vs[i].name]
            if remaining > 1e-9:
                continue
            yield Choice({vs[i].name: k for i, k in enumerate(cores) if k > 0}, share)

    best = -math.inf
    all_configs = [list(stage_configs(vs, ls)) for vs, ls in zip(stages, lines, strict=True)]
    for combo in itertools.product(*all_configs):
        if sum(sum(c.cores.values()) for c in combo) > budget:
            continue
        best = max(best, infadapter_objective(list(combo), stages, budget, set()))
    if math.isinf(best):
        assert not plan.feasible and plan.reason
        return
    assert plan.feasible, plan.reason
    choices = []
    for sp in plan.stages:
        raw = {v.name: sp.replicas_of(v.name) * sp.cores_of(v.name) for v in sp.variants}
        assert all(abs(c - round(c)) < 1e-9 for c in raw.values())
        cores = {k: int(round(c)) for k, c in raw.items()}
        share = {v.name: v.weight for v in sp.variants}
        choices.append(Choice(cores, share))
        for vs, ls in zip(stages, lines, strict=True):
            for v, ln in zip(vs, ls, strict=True):
                if v.name in cores:
                    assert cores[v.name] in ks
                    assert share[v.name] * lam <= cap(ln, cores[v.name]) + 1e-6
    assert sum(sum(c.cores.values()) for c in choices) <= budget
    assert infadapter_objective(choices, stages, budget, set()) >= best - 1e-6
    assert np.isclose(sum(v.weight for v in plan.stages[0].variants), 1.0)


@SETTINGS
@given(
    data=st.data(),
    n_stages=st.integers(1, 3),
    n_var=st.integers(1, 4),
    lam=st.floats(0.0, 150.0),
    budget=st.integers(2, 16),
    running=st.integers(0, 15),
    max_variants=st.sampled_from([None, 1, 2]),
)
def test_infadapter_enumeration_equals_the_proven_milp(
    data, n_stages, n_var, lam, budget, running, max_variants
) -> None:
    """The enumeration (the default solver) and the MILP proven optimal give the same
    objective, load-time term and running variants included."""
    stages = [
        tuple(data.draw(inf_variant(f"v{s}{i}", 750.0)) for i in range(n_var))
        for s in range(n_stages)
    ]
    ctx = ctx_of(stages, lam, 750.0 * n_stages, Capacity(2, 8.0))
    # some variants already run: switching them on costs no load time
    run = [(s, v.name) for s, vs in enumerate(stages) for i, v in enumerate(vs)
           if running >> ((s * n_var + i) % 4) & 1]  # fmt: skip
    if run:
        cur = Plan(stages=tuple(
            StagePlan(stage=f"s{s}", variants=tuple(VariantWeight(name=n, weight=1.0 / len(ns))
                                                   for n in ns), replicas=1, cores=2.0, batch=1)
            for s in range(n_stages) if (ns := [n for t, n in run if t == s])
        ))  # fmt: skip
        ctx = dataclasses.replace(ctx, current=cur)
    kw: dict[str, Any] = {"budget": budget, "max_cores": 8, "capacity": "measured",
                          "max_variants": max_variants}  # fmt: skip
    fast = InfAdapter(**kw)
    exact = InfAdapter(solver="milp", node_limit=10**6, **kw)
    a, ra = fast.solve(ctx, lam)
    b, rb = exact.solve(ctx, lam)
    assert (a is None) == (b is None), (ra, rb)
    if a is None or b is None:
        return
    variants = [tuple(vs) for vs in stages]
    on = fast.running(ctx)
    ja = infadapter_objective(a, variants, budget, on)
    jb = infadapter_objective(b, variants, budget, on)
    assert abs(ja - jb) <= 1e-6, (ja, jb, a, b)
