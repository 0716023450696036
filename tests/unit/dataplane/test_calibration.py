"""The lane calibration (issue 13): slowdown estimates and the feedback margin on admission,
alone and inside the GroupScheduler (batches that keep their head's deadline)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidal.dataplane.calibration import STEP, STRETCH_MAX, LaneCalibration
from tidal.dataplane.request import Admitted, QueuedRequest, Refused
from tidal.dataplane.scheduler import Dispatch, GroupScheduler, LaneReplica, SchedulerConfig


def lat(b: int, c: float) -> float:
    """l(b, c) = (0.1 b / c + 5) ms: 1024 rows take 107.4 ms."""
    return (0.1 * b / c + 5.0) / 1000.0


def lane(**cfg: object) -> GroupScheduler:
    s = GroupScheduler(lat, SchedulerConfig.model_validate({"hold_fraction": 0.0, **cfg}))
    s.max_batch = 8
    s.add_replica(LaneReplica(1, 1.0, state="ready"))
    return s


def req(i: int, t: float, slo: float, rows: int = 1) -> QueuedRequest:
    return QueuedRequest(i, t, t + slo, rows=rows, nbytes=4 * rows)


def test_stretch_holds_still_at_the_target_late_share_and_moves_off_it() -> None:
    def run(late_every: int, cycles: int, start: float) -> float:
        c = LaneCalibration(late_target=0.01)
        c.stretch = start
        for i in range(cycles * late_every):
            c.observe_request(late=i % late_every == 0)
        return c.stretch

    assert run(100, 20, 2.0) == pytest.approx(2.0, rel=0.05)  # 1% late: the fixed point
    assert run(20, 40, 2.0) > 3.5  # 5% late: more margin, toward the cap
    assert run(10_000, 1, 2.0) == 1.0  # (almost) none late: back to no margin
    off = LaneCalibration(late_target=0.0)
    off.observe_request(late=True)
    assert off.stretch == 1.0


@given(st.lists(st.booleans(), max_size=400), st.floats(0.001, 0.2))
def test_stretch_stays_in_bounds_and_a_late_answer_never_lowers_it(
    lates: list[bool], target: float
) -> None:
    c = LaneCalibration(late_target=target)
    for late in lates:
        before = c.stretch
        c.observe_request(late)
        assert 1.0 <= c.stretch <= STRETCH_MAX
        assert (c.stretch >= before) if late else (c.stretch <= before)
        if late and before < STRETCH_MAX / (1 + STEP):
            assert c.stretch == pytest.approx(before * (1 + STEP))


def test_slowdown_median_tail_and_idle_decay() -> None:
    c = LaneCalibration(late_target=0.01)
    for took in (0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.1):
        c.observe_batch(0.01, took)  # 2x, once 10x
    c.observe_batch(0.001, 1.0)  # predicted < 2 ms: a dispatch overhead, ignored
    assert c.slowdown == pytest.approx(2.0) and c.slowdown_tail == pytest.approx(2.0)
    assert c.slowdown_top == pytest.approx(10.0)  # the slowest of the window
    c.observe_batch(0.01, 0.1)
    assert c.slowdown_tail == pytest.approx(10.0) and c.slowdown == pytest.approx(2.0)
    c.stretch = 3.0
    c.observe_batch(0.01, 0.01, decay=0.5)  # idle before it: half of each factor is left
    assert c.stretch == pytest.approx(2.0)
    with pytest.raises(ValueError, match="late_target"):
        LaneCalibration(late_target=0.5)


def test_a_batch_keeps_its_heads_deadline_and_leaves_joiners_behind() -> None:
    for on in (True, False):
        s = lane(batch_deadline=on, admission=False)
        s.push(req(1, 0.0, slo=0.05), 0.0)  # 1 row, due at 50 ms
        s.push(req(2, 0.0, slo=0.2, rows=1024), 0.0)  # would make the batch take 107 ms
        (d,) = [a for a in s.step(0.0) if isinstance(a, Dispatch)]
        ids = [r.id for r in d.batch.requests]
        assert ids == ([1] if on else [1, 2])
        assert len(s.queue) == (1 if on else 0) and s.queued_rows == (1024 if on else 0)
        assert d.batch.predicted_end == pytest.approx(lat(1 if on else 1025, 1.0))


def test_admission_prices_a_joiner_that_would_break_the_head_in_the_next_batch() -> None:
    s = lane(batch_deadline=True)
    s.replicas[1].inflight, s.replicas[1].busy_until = 1, 0.01  # busy for 10 ms
    assert isinstance(s.push(req(1, 0.0, slo=0.05), 0.0), Admitted)
    v = s.push(req(2, 0.0, slo=0.3, rows=1024), 0.0)
    # not in the head's batch (10 + 107.5 ms > 50 ms): after it, 10 + 5.1 + 107.4 ms
    assert isinstance(v, Admitted)
    assert v.predicted_finish == pytest.approx(0.01 + lat(1, 1.0) + lat(1024, 1.0))
    off = lane(batch_deadline=False)
    off.replicas[1].inflight, off.replicas[1].busy_until = 1, 0.01
    off.push(req(1, 0.0, slo=0.05), 0.0)
    w = off.push(req(2, 0.0, slo=0.3, rows=1024), 0.0)
    assert isinstance(w, Admitted) and w.predicted_finish == pytest.approx(0.01 + lat(1025, 1))


def test_late_answers_stretch_admission_and_in_time_ones_relax_it() -> None:
    s = lane(late_target=0.01)
    t = 0.0
    for i in range(10):  # each answer 1 ms after its 30 ms deadline: late
        r = req(i, t, slo=0.03)
        assert isinstance(s.push(r, t), Admitted)
        (d,) = [a for a in s.step(t) if isinstance(a, Dispatch)]
        s.on_done(d.batch_id, t + 0.031)
        s.on_answered(r, t + 0.031, t + 0.031)
        t += 0.031
    assert s.calib.reply_s == 0.0
    assert s.stretch == pytest.approx((1 + STEP) ** 10)
    # an idle replica: no wait to stretch, admitted on its service time alone
    assert isinstance(s.push(req(100, t, slo=0.006), t), Admitted)
    (d,) = [a for a in s.step(t) if isinstance(a, Dispatch)]
    # behind it: a wait of 5.1 ms x1.63 + 5.1 ms = 13.4 ms > 12 ms (10.2 ms unstretched)
    v = s.push(req(101, t, slo=0.012), t)
    assert isinstance(v, Refused) and v.status == 503 and "wait x1.63" in v.reason
    assert isinstance(s.push(req(102, t, slo=0.014), t), Admitted)
    before = s.stretch
    s.on_done(d.batch_id, t + 0.005)
    s.on_answered(d.batch.requests[0], t + 0.005, t + 0.005)  # in time
    assert s.stretch < before


def test_the_answer_path_delay_is_taken_off_the_deadline_admission_checks() -> None:
    s = lane(late_target=0.01)
    for i in range(10):  # answers taken up 4 ms after their batch ended (a busy loop)
        r = req(i, 0.0, slo=1.0)
        s.on_answered(r, 0.1, 0.104)
    assert s.calib.reply_s == pytest.approx(0.004)
    # idle replica, 5.1 ms of service: a 9 ms budget fits it, but not with 4 ms to answer
    assert isinstance(s.push(req(20, 1.0, slo=0.009), 1.0), Refused)
    assert isinstance(s.push(req(21, 1.0, slo=0.0095), 1.0), Admitted)


def test_a_request_that_cannot_finish_even_alone_is_expired_at_dispatch() -> None:
    from tidal.dataplane.scheduler import Expired

    for on in (True, False):
        s = lane(expire_hopeless=on, admission=False)
        s.replicas[1].inflight, s.replicas[1].busy_until = 1, 0.05  # busy for 50 ms
        s.push(req(1, 0.0, slo=0.1, rows=1024), 0.0)  # needs 107 ms: cannot make 100 ms
        s.push(req(2, 0.0, slo=0.2), 0.0)  # 1 row: 5.1 ms, can
        s.replicas[1].inflight = 0  # the busy batch ended at 50 ms
        acts = s.step(0.05)
        gone = [r.id for a in acts if isinstance(a, Expired) for r in a.requests]
        ran = [r.id for a in acts if isinstance(a, Dispatch) for r in a.batch.requests]
        assert (gone, ran) == (([1], [2]) if on else ([], [1, 2]))
        assert len(s.queue) == 0 and s.queued_rows == 0


def test_the_own_batch_is_priced_up_to_the_slowest_recent_speed_as_the_stretch_asks() -> None:
    # a 1024-row batch takes 107.4 ms at the profile; budget 150 ms, on an idle replica
    for stretch, top, admitted in ((1.0, 3.0, True), (2.0, 3.0, False), (2.0, 1.2, True)):
        s = lane(late_target=0.01)
        s.calib.stretch, s.calib.slowdown_top = stretch, top
        s.last_free = 0.0  # busy until now: nothing decayed yet
        v = s.push(req(1, 0.0, slo=0.15, rows=1024), 0.0)
        assert isinstance(v, Admitted) == admitted, (stretch, top, v)


def test_a_sustained_slowdown_prices_admission_within_a_few_batches() -> None:
    c = LaneCalibration()
    for _ in range(30):
        c.observe_batch(0.01, 0.01)  # the profile's speed
    c.observe_batch(0.01, 0.03)  # one preempted batch: priced by neither
    assert c.slowdown == pytest.approx(1.0) and c.slowdown_now == pytest.approx(1.0)
    for _ in range(2):
        c.observe_batch(0.01, 0.03)  # three of the last five at 3x: a new regime
    assert c.slowdown_now == pytest.approx(3.0)
    assert c.slowdown == pytest.approx(1.0)  # the window's median: expiry and busy-until
    for _ in range(3):
        c.observe_batch(0.01, 0.01)  # recovered: the last five and the window agree
    assert c.slowdown_now == pytest.approx(1.0)
    for _ in range(5):
        c.observe_batch(0.01, 0.005)  # faster than the window: the window still prices it
    assert c.slowdown_now == c.slowdown == pytest.approx(1.0)


def test_admission_prices_at_the_recent_speed_but_dispatch_expiry_at_the_median() -> None:
    s = lane(expire_hopeless=True)
    for _ in range(30):
        s.calib.observe_batch(0.01, 0.01)
    for _ in range(3):
        s.calib.observe_batch(0.01, 0.02)  # the last batches ran at 2x
    s.replicas[1].inflight, s.replicas[1].busy_until = 1, 0.05  # busy for 50 ms
    s.last_free = 0.0  # busy until now: nothing decayed yet
    # 1024 rows: 107.4 ms at the profile, 214.8 ms at 2x; after 50 ms: 157 / 265 ms
    assert isinstance(s.push(req(1, 0.0, slo=0.2, rows=1024), 0.0), Refused)
    s.calib.slowdown_now = 1.0  # (what the median alone would have priced)
    assert isinstance(s.push(req(2, 0.0, slo=0.2, rows=1024), 0.0), Admitted)
    s.replicas[1].inflight = 0
    ran = [r.id for a in s.step(0.05) if isinstance(a, Dispatch) for r in a.batch.requests]
    assert ran == [2]  # expiry at dispatch judges at the median: it can still make it


def test_overrun_end_from_the_longer_batches_of_the_window_or_as_late_again() -> None:
    c = LaneCalibration()
    for took in (0.01, 0.01, 0.01, 0.02, 0.04):
        c.observe_batch(0.01, took)
    # started at 0, 10 ms predicted, still running at 15 ms: ratios above 1.5 are 2 and 4
    assert c.overrun_end(0.0, 0.01, 0.015, 0.01) == pytest.approx(0.02)
    # still running at 50 ms, longer than every batch seen: as far past now as past its end
    assert c.overrun_end(0.0, 0.01, 0.05, 0.01) == pytest.approx(0.09)


def test_admission_sees_an_overrunning_batch_as_busy_until_its_expected_end() -> None:
    for on in (True, False):
        s = lane(price_overrun=on)
        s.push(req(1, 0.0, slo=1.0), 0.0)
        (d,) = [a for a in s.step(0.0) if isinstance(a, Dispatch)]
        assert d.batch.predicted_end == pytest.approx(lat(1, 1.0))  # 5.1 ms
        # at 40 ms it still runs (predicted to end at 5.1 ms): expected end 74.9 ms, so a
        # 1024-row request (107.4 ms) due at 150 ms cannot make it; priced as free now, it can
        v = s.push(req(2, 0.04, slo=0.11, rows=1024), 0.04)
        assert isinstance(v, Refused if on else Admitted), (on, v)
        assert s.replicas[1].busy_until == pytest.approx(lat(1, 1.0))  # nothing changed


def test_an_answer_with_less_slack_than_the_answer_path_counts_as_late() -> None:
    s = lane(late_target=0.01)
    for i in range(10):  # answers taken up 4 ms after their batch ended: reply_s = 4 ms
        s.on_answered(req(i, 0.0, slo=1.0), 0.1, 0.104)
    assert s.stretch == 1.0 and s.calib.reply_s == pytest.approx(0.004)
    s.on_answered(req(20, 0.0, slo=0.2), 0.193, 0.197)  # 3 ms before its deadline
    assert s.stretch == pytest.approx(1 + STEP)  # the rest of its way takes ~4 ms: late
    s.on_answered(req(21, 0.0, slo=0.2), 0.19, 0.194)  # 6 ms of slack: in time
    assert s.stretch < 1 + STEP
