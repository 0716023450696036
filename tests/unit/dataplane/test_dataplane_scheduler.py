"""GroupScheduler on its own: a clock-free state machine driven by explicit times."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from tidal.dataplane.request import Admitted, QueuedRequest, Refused
from tidal.dataplane.routing import Router
from tidal.dataplane.scheduler import (
    BUSY,
    DRAINING,
    READY,
    SICK,
    Dispatch,
    Expired,
    GroupScheduler,
    LaneReplica,
    SchedulerConfig,
    WakeAt,
)


def lat(b: int, c: float) -> float:
    """l(b, c) = (10 b / c + 5) ms."""
    return (10.0 * b / c + 5.0) / 1000.0


def sched(n: int = 1, batch: int = 2, **cfg: object) -> GroupScheduler:
    s = GroupScheduler(lat, SchedulerConfig.model_validate({"hold_fraction": 0.0, **cfg}))
    s.max_batch = batch
    for i in range(n):
        s.add_replica(LaneReplica(i + 1, 1.0, state=READY))
    return s


def req(i: int, t: float, slo: float = 1.0, rows: int = 1) -> QueuedRequest:
    return QueuedRequest(i, t, t + slo, rows=rows, nbytes=4 * rows)


def dispatches(actions: Sequence[object]) -> list[Dispatch]:
    return [a for a in actions if isinstance(a, Dispatch)]


def test_push_step_done_and_predicted_busy_until() -> None:
    s = sched()
    v = s.push(req(1, 0.0), 0.0)
    assert isinstance(v, Admitted) and v.predicted_finish == pytest.approx(0.015)
    (d,) = dispatches(s.step(0.0))
    assert [r.id for r in d.batch.requests] == [1] and d.replica.id == 1
    assert d.batch.predicted_end == pytest.approx(0.015)
    assert d.replica.status == BUSY
    assert s.push(req(2, 0.001), 0.001) and s.push(req(3, 0.002), 0.002)
    assert dispatches(s.step(0.002)) == []  # the only replica is busy
    fin = s.on_done(d.batch_id, 0.016)
    assert fin is not None and [r.id for r in fin.requests] == [1] and not fin.stop
    (d2,) = dispatches(s.step(0.016))
    assert [r.id for r in d2.batch.requests] == [2, 3]  # full batch
    assert s.on_done(12345, 0.1) is None


def test_admission_refuses_with_reason_and_no_replica() -> None:
    s = sched()
    s.push(req(1, 0.0), 0.0)
    s.step(0.0)
    v = s.push(req(2, 0.0, slo=0.02), 0.0)  # behind a 15 ms batch, 15 ms more > 20 ms
    assert isinstance(v, Refused) and v.status == 503 and "exceeds the budget" in v.reason
    s.downstream_s = 0.01  # later stages need 10 ms: the stage deadline is 10 ms earlier
    s2 = sched()
    s2.downstream_s = 0.01
    assert isinstance(s2.push(req(3, 0.0, slo=0.02), 0.0), Refused)
    assert isinstance(s2.push(req(4, 0.0, slo=0.03), 0.0), Admitted)
    empty = sched(n=0)
    v = empty.push(req(5, 0.0), 0.0)
    assert isinstance(v, Refused) and "no replica" in v.reason
    off = sched(n=0, admission=False)
    assert isinstance(off.push(req(6, 0.0), 0.0), Admitted)


def test_expiry_and_expiry_timer() -> None:
    s = sched(batch=1)
    s.push(req(1, 0.0), 0.0)
    s.step(0.0)
    s.push(req(2, 0.0, slo=0.1), 0.0)
    acts = s.step(0.0)
    assert WakeAt(0.1) in acts  # answer 504 at the head's deadline
    out = s.on_timer(0.1)
    assert [[r.id for r in a.requests] for a in out if isinstance(a, Expired)] == [[2]]
    lazy = sched(batch=1, expire_timer=False)
    lazy.push(req(1, 0.0), 0.0)
    lazy.step(0.0)
    lazy.push(req(2, 0.0, slo=0.1), 0.0)
    assert not any(isinstance(a, WakeAt) for a in lazy.step(0.0))


def test_hold_window_wakes_once_and_only_earlier() -> None:
    s = sched(batch=4, hold_fraction=0.5)  # hold = 7.5 ms at 1 core
    for i in range(3):  # one second of traffic: a rate estimate for the next second
        s.push(req(100 + i, 0.1 * i), 0.1 * i)
        for d in dispatches(s.step(0.1 * i)):
            s.on_done(d.batch_id, 0.1 * i + 0.02)
    s.push(req(1, 1.0), 1.0)
    acts = s.step(1.0)
    assert acts == [WakeAt(1.0075)]
    s.push(req(2, 1.001), 1.001)
    assert s.step(1.001) == []  # a later wake (1.0085) is not emitted: the armed one is earlier
    # The anchor moved to the latest arrival: the armed timer finds the window still open.
    assert s.on_timer(1.0075) == [WakeAt(1.0085)]
    (d,) = dispatches(s.on_timer(1.0085))
    assert [r.id for r in d.batch.requests] == [1, 2]
    h = sched(batch=4, hold_fraction=0.5, hold_anchor="head")
    h.rate.count(0.5)
    h.push(req(1, 1.0), 1.0)
    h.step(1.0)
    h.push(req(2, 1.001), 1.001)
    (d,) = dispatches(h.on_timer(1.0075))  # anchored at the head's arrival
    assert len(d.batch.requests) == 2


def test_cancel_queued_and_inflight() -> None:
    s = sched()
    s.push(req(1, 0.0), 0.0)
    (d,) = dispatches(s.step(0.0))
    s.push(req(2, 0.0, rows=3), 0.0)
    assert s.queued_rows == 3 and s.queued_bytes == 12
    assert s.cancel(2) == "queued" and s.queued_rows == 0 and len(s.queue) == 0
    assert s.cancel(1) == "inflight" and s.cancel(1) is None and s.cancel(99) is None
    fin = s.on_done(d.batch_id, 0.02)
    assert fin is not None and fin.requests == [] and fin.cancelled == (1,)
    assert s.cancelled == 2


def test_replica_death_requeues_or_fails() -> None:
    s = sched(n=2, batch=1, max_retries=1)
    s.push(req(1, 0.0, slo=1.0), 0.0)
    s.push(req(2, 0.0, slo=0.05), 0.0)
    ds = dispatches(s.step(0.0))
    assert {d.replica.id for d in ds} == {1, 2}
    victim = next(d for d in ds if d.batch.requests[0].id == 1).replica.id
    requeued, failed = s.on_replica_died(victim, 0.1)
    assert [r.id for r in requeued] == [1] and failed == [] and 1 in s.queue
    assert s.queue.peek().retries == 1  # type: ignore[union-attr]
    other = 3 - victim
    fin = s.on_done(next(d for d in ds if d.replica.id == other).batch_id, 0.1)
    assert fin is not None
    (d,) = dispatches(s.step(0.1))
    requeued, failed = s.on_replica_died(other, 0.2)
    assert requeued == [] and [r.id for r in failed] == [1]  # out of retries
    assert s.replicas == {}
    del d


def test_sick_draining_and_removed_replicas() -> None:
    s = sched(n=2)
    s.mark_sick(1)
    assert s.replicas[1].state == SICK
    s.push(req(1, 0.0), 0.0)
    (d,) = dispatches(s.step(0.0))
    assert d.replica.id == 2  # a sick replica takes no batch
    assert s.on_replica_removed(2) is False and s.replicas[2].state == DRAINING
    assert not s.routable()  # sick + draining: nothing to route to
    fin = s.on_done(d.batch_id, 0.02)
    assert fin is not None and fin.stop and 2 not in s.replicas
    assert s.on_replica_removed(1) is True and s.replicas == {}


def test_replica_choice_most_cores_then_lowest_id() -> None:
    s = sched(n=0, batch=1)
    for rid, c in ((3, 1.0), (1, 2.0), (2, 2.0)):
        s.add_replica(LaneReplica(rid, c, state=READY))
    s.push(req(1, 0.0), 0.0)
    (d,) = dispatches(s.step(0.0))
    assert d.replica.id == 1


def test_pipelining_sends_a_second_batch_just_before_the_first_ends() -> None:
    s = sched(batch=1, pipeline_depth=2, prefetch_s=0.002)
    s.push(req(1, 0.0), 0.0)
    s.push(req(2, 0.0), 0.0)
    (d1,) = dispatches(s.step(0.0))  # ends at 15 ms (predicted)
    assert dispatches(s.step(0.010)) == []  # 5 ms before the end: too early
    (d2,) = dispatches(s.step(0.0135))
    assert d2.replica is d1.replica and d2.batch.predicted_end == pytest.approx(0.030)


def test_config_is_validated_with_the_field_named() -> None:
    with pytest.raises(ValidationError, match="pipeline_depth"):
        SchedulerConfig(pipeline_depth=0)
    with pytest.raises(ValidationError, match="hold_anchor"):
        SchedulerConfig.model_validate({"hold_anchor": "soon"})
    with pytest.raises(ValidationError, match="bogus"):
        SchedulerConfig.model_validate({"bogus": 1})


def test_router_smooth_weighted_round_robin() -> None:
    r = Router()
    r.set_weights({"a": 3.0, "b": 1.0, "z": 0.0})
    picks = [r.pick(lambda n: True) for _ in range(8)]
    assert picks.count("a") == 6 and picks.count("b") == 2 and "z" not in picks
    assert [r.pick(lambda n: n == "b") for _ in range(3)] == ["b", "b", "b"]
    assert r.pick(lambda n: False) is None
    r.set_weights({"a": 1.0})
    assert r.pick(lambda n: True) == "a"


def test_learned_slowdown_is_a_median_and_decays_while_idle() -> None:
    s = sched(batch=1, adapt_latency=True)
    t = 0.0
    for i in range(9):  # batches of 15 ms predicted; one preempted batch takes 10x
        s.push(req(i, t, slo=10.0), t)
        (d,) = dispatches(s.step(t))
        took = 0.15 if i == 4 else 0.03  # 2x the profile, once 10x
        s.on_done(d.batch_id, t + took)
        t += took
    assert s.slowdown == pytest.approx(2.0)  # the median ignores the outlier
    assert s._factor(t) == pytest.approx(2.0)
    assert s._factor(t + 1.0 + 5.0) == pytest.approx(1.5)  # one half-life after 1 s idle
    assert s._factor(t + 61.0) == pytest.approx(1.0, abs=1e-3)


def _counting(s: GroupScheduler) -> list[int]:
    calls: list[int] = []
    admit = s._admit

    def counted(r: QueuedRequest, now: float) -> Admitted | Refused:
        calls.append(r.id)
        return admit(r, now)

    s._admit = counted  # type: ignore[method-assign,assignment]
    return calls


def test_a_quote_that_admitted_is_carried_to_the_same_requests_push() -> None:
    s = sched(batch=4)
    s.push(req(1, 0.0), 0.0)  # something queued: the full pricing, not the fast path
    calls = _counting(s)
    r = req(2, 0.0)
    assert s.quote(1, r.deadline, 0.0001) is None
    assert isinstance(s.push(r, 0.0002), Admitted)
    assert calls == [-1]  # priced once (by the quote), not again in push
    assert [q.id for q in s.queue.requests()] == [1, 2]


def test_a_carried_quote_is_priced_again_when_anything_differs() -> None:
    s = sched(batch=4)
    s.push(req(1, 0.0), 0.0)
    calls = _counting(s)
    # another deadline, more rows, too old, or the lane changed in between: priced again
    r2, r3, r4, r5 = req(2, 0.0), req(3, 0.0, rows=2), req(4, 0.0), req(5, 0.0)
    s.quote(1, r2.deadline + 0.1, 0.0)
    s.push(r2, 0.0)
    s.quote(1, r3.deadline, 0.0)
    s.push(r3, 0.0)
    s.quote(1, r4.deadline, 0.0)
    s.push(r4, 0.1)
    s.quote(1, r5.deadline, 0.1)
    s.step(0.1)  # a dispatch: the lane is not the one that was priced
    s.push(r5, 0.1)
    assert calls == [-1, 2, -1, 3, -1, 4, -1, 5]


def test_a_refusing_quote_is_not_carried_and_push_still_refuses() -> None:
    s = sched(batch=1)
    verdicts = [s.push(req(i, 0.0), 0.0) for i in range(100)]  # 15 ms each, 1 s deadline
    assert isinstance(verdicts[-1], Refused)
    r = req(100, 0.0)  # the same deadline: behind the full queue too
    assert isinstance(s.quote(1, r.deadline, 0.0), Refused)
    assert isinstance(s.push(r, 0.0), Refused)
