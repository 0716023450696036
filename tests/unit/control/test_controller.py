"""The control loop with a simulated clock, a scripted metrics source and an in-memory
actuator: decisions at the planner's interval, infeasible plans kept out, faults logged."""

from __future__ import annotations

from typing import Any

import pytest

from tidal.control.controller import Controller
from tidal.control.decisions import DecisionLog, read_log
from tidal.control.monitor import Monitor, StageCounters
from tidal.core.actuator import Actuation, Actuator
from tidal.core.clock import SimClock
from tidal.core.plan import Plan
from tidal.core.profile import LatencyFit, VariantProfile
from tidal.planners import Governed, create
from tidal.planners.base import Capacity, Pending, PlanContext, StageCandidates


class Source:
    """Counters advanced by the test: `rate` req/s arrive, `util` of allocated cores busy."""

    def __init__(self, clock: SimClock, act: MemActuator) -> None:
        self.clock, self.act = clock, act
        self.arrivals = 0.0
        self.busy = 0.0
        self.rate = 10.0
        self.util = 0.5
        self.service_ms = 0.0  # observed batch service time (batch 1); 0 = no batches
        self.batches = 0.0
        self.busy_s = 0.0
        self.last = clock.now()

    def read(self) -> list[StageCounters]:
        dt = self.clock.now() - self.last
        self.last = self.clock.now()
        plan = self.act.current()
        assert plan is not None
        sp = plan.stages[0]
        self.arrivals += self.rate * dt
        self.busy += self.util * sp.total_cores * dt
        if self.service_ms:
            self.batches += self.rate * dt
            self.busy_s += self.rate * dt * self.service_ms / 1000.0
        return [
            StageCounters(
                stage="s",
                arrivals=int(self.arrivals),
                completions=int(self.arrivals),
                busy_core_s=self.busy,
                cores=sp.cores,
                replicas=sp.replicas,
                new_latencies_ms=(10.0, 20.0),
                budgets_ms=(100.0, 200.0),
                busy_s=self.busy_s,
                batches=int(self.batches),
                batch_items=int(self.batches),
            )
        ]


class MemActuator:
    name = "memory"

    def __init__(self, clock: SimClock, plan: Plan, refuse: bool = False) -> None:
        self.clock, self.plan, self.refuse = clock, plan, refuse
        self.applied: list[Plan] = []

    def apply(self, plan: Plan) -> Actuation:
        a = Actuation(plan=plan, requested_at=self.clock.now())
        if self.refuse:
            a.accepted, a.reason = False, "does not fit: 99 cores > 2"
            return a
        self.plan = plan
        self.applied.append(plan)
        a.settled_at = self.clock.now() + 0.5
        return a

    def current(self) -> Plan | None:
        return self.plan

    def pending(self) -> Pending:
        return Pending()

    def capacity(self) -> Capacity:
        return Capacity(nodes=1, cores_per_node=8)


PROFILE = VariantProfile(
    name="v", task="t", accuracy=0.9, fit=LatencyFit(gamma=5, delta=1, epsilon=2, eta=1)
)
STAGES = (StageCandidates("s", (PROFILE,)),)
START = Plan.single("s", "v", replicas=1, cores=1.0, batch=1)


def _controller(planner: Any, clock: SimClock, act: MemActuator, **kw: Any) -> Controller:
    src = Source(clock, act)
    return Controller(planner, act, Monitor(src, clock), STAGES, 500.0, clock, **kw)


def test_memory_actuator_conforms() -> None:
    assert isinstance(MemActuator(SimClock(), START), Actuator)


def test_hpa_scales_out_at_its_interval(tmp_path: Any) -> None:
    clock = SimClock()
    act = MemActuator(clock, START)
    log = DecisionLog(tmp_path / "d.jsonl")
    c = _controller(Governed(create("hpa")), clock, act, decisions=log)
    c.monitor.source.util = 1.4  # type: ignore[attr-defined]
    decisions = []
    for _ in range(40):
        d = c.tick()
        if d is not None:
            decisions.append(d)
        clock.advance(1.0)
    # hpa decides every 15 s: at t=0, 15, 30.
    assert [d.t for d in decisions] == [0.0, 15.0, 30.0]
    # 1.4 / 0.7 = 2x: 1 -> 2 -> 4 replicas.
    assert [p.stages[0].replicas for p in act.applied] == [2, 4]
    assert decisions[1].action == "applied" and decisions[1].time_to_effect_s == 0.5
    rows = read_log(tmp_path / "d.jsonl")
    assert [r["action"] for r in rows] == [d.action for d in decisions]
    assert rows[1]["settled"] and rows[1]["inputs"]["stages"][0]["util"] == pytest.approx(1.4)
    assert rows[1]["inputs"]["queued"] == 2


class Infeasible:
    name = "bad"
    interval_s = 1.0

    def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
        p = Plan.single("s", "v", replicas=50, cores=2.0, batch=1)
        return p.model_copy(update={"feasible": False, "reason": "load 900 req/s > capacity"}), 0


class Raises:
    name = "raises"
    interval_s = 1.0

    def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
        raise RuntimeError("boom")


def test_infeasible_plan_keeps_last_feasible_and_logs_reason() -> None:
    clock = SimClock()
    act = MemActuator(clock, START)
    c = _controller(Infeasible(), clock, act)
    d = c.tick()
    assert d is not None and d.action == "kept-last-feasible"
    assert "900 req/s" in d.reason
    assert act.current() == START and not act.applied


class MostThatFits:
    name = "most"
    interval_s = 1.0

    def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
        p = Plan.single("s", "v", replicas=4, cores=2.0, batch=1)  # 8 cores: fits 1 x 8
        return p.model_copy(update={"feasible": False, "reason": "planned for 60 req/s"}), 0


def test_flagged_plan_that_fits_is_applied_by_default() -> None:
    clock = SimClock()
    act = MemActuator(clock, START)
    c = _controller(MostThatFits(), clock, act)
    d = c.tick()
    assert d is not None and d.action == "applied" and not d.feasible
    assert d.reason == "planned for 60 req/s"
    assert act.current() is not None and act.current().stages[0].replicas == 4  # type: ignore[union-attr]
    assert c.last_feasible == START  # a best-effort plan is not recorded as feasible


def test_best_effort_applies_flagged_plan() -> None:
    clock = SimClock()
    act = MemActuator(clock, START)
    c = _controller(Infeasible(), clock, act, apply_best_effort=True)
    d = c.tick()
    assert d is not None and d.action == "applied" and not d.feasible
    assert act.current() is not None and act.current().stages[0].replicas == 50  # type: ignore[union-attr]


def test_refused_plan_keeps_plan_in_force() -> None:
    clock = SimClock()
    act = MemActuator(clock, START, refuse=True)
    c = _controller(Governed(create("static", replicas=3)), clock, act)
    d = c.tick()
    assert d is not None and d.action == "kept-last-feasible" and "does not fit" in d.reason
    assert act.current() == START


def test_planner_exception_is_logged_and_serving_plan_stays() -> None:
    clock = SimClock()
    act = MemActuator(clock, START)
    c = _controller(Raises(), clock, act)
    d = c.tick()
    assert d is not None and d.action == "error" and "boom" in d.reason
    assert act.current() == START


def test_restarted_controller_starts_from_plan_in_force() -> None:
    clock = SimClock()
    act = MemActuator(clock, START)
    c1 = _controller(Governed(create("static", replicas=2)), clock, act)
    c1.tick()
    in_force = act.current()
    assert in_force is not None and in_force.stages[0].replicas == 2
    c2 = _controller(Governed(create("static", replicas=2)), clock, act)
    assert c2.last_feasible == in_force
    clock.advance(1.0)
    d = c2.tick()
    assert d is not None and d.action == "unchanged"
    assert len(act.applied) == 1


class Recorder:
    name = "recorder"
    interval_s = 1.0

    def __init__(self) -> None:
        self.seen: list[PlanContext] = []

    def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
        self.seen.append(ctx)
        assert ctx.current is not None
        return ctx.current, None


def test_live_calibration_scales_the_profile_by_the_observed_slowdown() -> None:
    clock = SimClock()
    act = MemActuator(clock, START)
    rec = Recorder()
    c = _controller(rec, clock, act, calibrate=True)
    assert isinstance(c.monitor, Monitor) and isinstance(c.monitor.source, Source)
    src = c.monitor.source
    # The profile predicts l(1, 1 core) = 5 + 1 + 2 + 1 = 9 ms; the machine takes 18 ms.
    src.service_ms = 18.0
    for _ in range(4):
        c.tick()
        clock.advance(1.0)
    fit = rec.seen[-1].stages[0].variants[0].fit
    assert fit.latency_ms(1, 1.0) == pytest.approx(18.0, rel=0.05)
    assert c.decisions.entries[-1].inputs["slowdown"]["s"] == pytest.approx(2.0, rel=0.05)
    # Without calibration the planner sees the profile as measured.
    rec2 = Recorder()
    c2 = _controller(rec2, clock, act)
    c2.monitor.source.service_ms = 18.0  # type: ignore[attr-defined]
    for _ in range(3):
        c2.tick()
        clock.advance(1.0)
    assert rec2.seen[-1].stages[0].variants[0].fit.latency_ms(1, 1.0) == pytest.approx(9.0)


def test_run_ticks_on_a_fixed_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each tick's own work (0.3 s here) does not push the next tick later: decisions at
    0, 1, 2, ... (they drifted to 0, 1.3, 2.6 when the loop waited tick_s after the work);
    a tick that overruns its slot (2.5 s of work) skips the slots it missed."""
    import asyncio

    clock = SimClock()
    act = MemActuator(clock, START)

    class Keep:
        name = "keep"
        interval_s = 1.0

        def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
            return START, None

    c = _controller(Keep(), clock, act)
    work = {3: 2.5}
    seen: list[float] = []
    real_tick = c.tick

    def tick(at: float | None = None) -> Any:
        seen.append(clock.now())
        d = real_tick(at)
        clock.advance(work.get(len(seen), 0.3))
        return d

    c.tick = tick  # type: ignore[method-assign]
    stop = asyncio.Event()

    async def wait_for(aw: Any, timeout: float) -> None:  # the clock jumps to the timeout
        aw.close()
        assert timeout > 0
        clock.advance(timeout)
        if len(seen) >= 7:
            stop.set()
        raise TimeoutError

    monkeypatch.setattr(asyncio, "wait_for", wait_for)
    asyncio.run(c.run(1.0, stop))
    assert seen == pytest.approx([0.0, 1.0, 2.0, 5.0, 6.0, 7.0, 8.0])
    decided = [d["t"] for d in c.decisions.recent(20)]
    assert decided == pytest.approx(seen)  # every tick decided (interval 1 s = the tick)


def test_woken_early_ticks_still_plan_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop is woken up to a few ms early or late (measured live: 0.9936-1.008 s apart);
    decisions are taken at the schedule's slots, so the wrapped planner (`Governed`, interval
    1 s) runs at every tick. At the clock readings it skipped every tick read less than 1 s
    after the one that planned (here every other one)."""
    import asyncio

    clock = SimClock()
    act = MemActuator(clock, START)
    calls: list[float] = []

    class Count:
        name = "count"
        interval_s = 1.0

        def plan(self, ctx: PlanContext) -> tuple[Plan, Any]:
            calls.append(ctx.now)
            return START, None

    c = _controller(Governed(Count()), clock, act)
    stop = asyncio.Event()
    jitter = iter([-0.0006, 0.0002, -0.0004, -0.0001, 0.0003, -0.0005] * 3)

    async def wait_for(aw: Any, timeout: float) -> None:  # woken a little early or late
        aw.close()
        clock.advance(timeout + next(jitter))
        if len(c.decisions.entries) >= 12:
            stop.set()
        raise TimeoutError

    monkeypatch.setattr(asyncio, "wait_for", wait_for)
    asyncio.run(c.run(1.0, stop))
    assert calls == pytest.approx([float(k) for k in range(len(calls))])
    assert len(calls) == len(c.decisions.entries) >= 12
    # the readings themselves: the planner is skipped when read < 1 s after it last ran
    calls.clear()
    c2 = _controller(Governed(Count()), clock, act)
    for dt in (0.0, 0.9994, 1.0002, 0.9996):
        clock.advance(dt)
        c2.tick()
    assert len(calls) == 2
