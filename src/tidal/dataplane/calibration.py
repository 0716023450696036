"""Live calibration of one lane's admission (issue 13): how fast its replicas really serve,
and how wrong the predicted finish of admitted requests turned out. Pure state: no clock
reads, no asyncio; every time is passed in, so the simulator and tests drive it exactly.

Two estimators, both fed by the lane's scheduler (`GroupScheduler.on_done`):

- `slowdown` (the service rate): the median of measured / predicted time over the last
  `BATCH_WINDOW` batches predicted to take >= `MIN_BATCH_S` (shorter ones measure the
  dispatch overhead, not the service), clamped to [0.5, 20]. Admission and busy-until
  predictions are multiplied by it. The median, not a high percentile: on a shared machine
  one preempted batch must not price every arrival.
- `slowdown_now` (admission's price of the service rate): `slowdown`, or the median of the
  last `RECENT` of the same ratios when that is higher. A sustained slowdown (the machine got
  busier: runs of batches at 2.5-4x, measured) prices new arrivals within a few batches
  instead of after half the window, while a recovery is believed only once the window
  agrees. Only admission uses it: the expiry of already-admitted requests at dispatch and the
  dispatched batches' busy-until keep the window median, so a short spike does not expire
  work that was admitted in good faith.
- `overrun_end(start, predicted_raw_s, now)`: when a batch still runs past its predicted end,
  when it is now expected to end: at the median of the window's ratios that exceed what it
  has run so far, or, when it has outrun all of them, as far past `now` as it is past its
  prediction (admission prices the arrivals behind it from that, not from "free now").
- `slowdown_tail`: the 90th percentile of the same ratios: a batch that must keep its head's
  deadline (`SchedulerConfig.batch_deadline`) is cut so it ends in time even at that speed.
- `slowdown_top`: the largest of the same ratios (the window's ~97th percentile). It bounds
  how far the arriving request's own batch (its service) is priced above the median.
- `stretch` (the feedback margin on the wait): each admitted request that completes is late
  (after its stage deadline) or not. On a late one ``stretch *= 1 + STEP``; on one in time
  ``stretch *= 1 - STEP x late_target / (1 - late_target)``, clamped to [1, `STRETCH_MAX`].
  Its fixed point is a late share of exactly `late_target` among the admitted (a stochastic
  approximation of that rate; with no late answer it falls back to 1). Admission admits a
  request only when ``now + stretch x wait + tail x service`` meets its deadline (wait: until
  its batch starts; tail: ``min(stretch, slowdown_top / slowdown)``: the own batch at the
  median while answers are in time, up to the slowest recent speed as late ones accumulate;
  pricing it at a fixed tail always refused a third of 0.5x load on a busy machine, and a cap
  at the 90th percentile left the late share at ~3% where one batch in ten ran 1.5-2x the
  median: the controller could not reach its target), so whatever makes the
  wait longer than predicted (CPU contention, the gateway's own parsing, batches ahead that
  ran long) is corrected from what the lane observed, in a closed loop: more late answers
  raise it, so fewer requests are admitted and the queue shortens. A request that finds an
  idle replica has no wait to stretch: it is judged on its own service.

- `reply_s` (the answer path): the 90th percentile of the last `BATCH_WINDOW` delays from a
  batch's end to its answer being taken up by the driver (the live gateway's event loop,
  busy reading and refusing other requests under overload, answers late). Admission
  subtracts it from the deadline it checks, and the stretch counts a request late by when it
  was answered, not when its batch ended.

Both decay toward 1 while the lane is idle (`decay`, from the scheduler: half-life
`ADAPT_HALF_LIFE_S` after 1 s with nothing in flight), so a lane that refused everything
recovers instead of locking in an old estimate.
"""

from __future__ import annotations

from collections import deque

BATCH_WINDOW = 32
RECENT = 5
MIN_BATCH_S = 0.002
SLOWDOWN_MIN, SLOWDOWN_MAX = 0.5, 20.0
STEP = 0.05
STRETCH_MAX = 4.0


def _clamp(x: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, x))


class LaneCalibration:
    """The estimators of the module docstring for one lane. `late_target` in [0, 0.5): the
    late share the stretch steers to (0 turns the stretch off: it stays 1.0)."""

    __slots__ = (
        "_batch",
        "_down",
        "_reply",
        "late_target",
        "reply_s",
        "slowdown",
        "slowdown_now",
        "slowdown_tail",
        "slowdown_top",
        "stretch",
    )

    def __init__(self, late_target: float = 0.0) -> None:
        if not 0.0 <= late_target < 0.5:
            raise ValueError(f"late_target must be in [0, 0.5), got {late_target}")
        self.late_target = late_target
        self._down = 1.0 - STEP * late_target / (1.0 - late_target)
        self.slowdown = 1.0
        self.slowdown_now = 1.0
        self.slowdown_tail = 1.0
        self.slowdown_top = 1.0
        self.stretch = 1.0
        self.reply_s = 0.0
        self._batch: deque[float] = deque(maxlen=BATCH_WINDOW)
        self._reply: deque[float] = deque(maxlen=BATCH_WINDOW)

    # ------------------------------------------------------------------ observations
    def observe_batch(self, predicted_s: float, took_s: float, decay: float = 1.0) -> None:
        """A batch predicted (at the profile's rate) to take `predicted_s` took `took_s`.
        `decay` < 1: the lane was idle before it; old ratios and the stretch move that much
        toward 1."""
        if decay < 1.0:
            self._batch = deque((1.0 + (x - 1.0) * decay for x in self._batch), BATCH_WINDOW)
            self.stretch = self.decayed(self.stretch, decay)
            self._reply = deque((x * decay for x in self._reply), BATCH_WINDOW)
            self.reply_s *= decay
        if predicted_s < MIN_BATCH_S:
            return
        self._batch.append(took_s / predicted_s)
        srt = sorted(self._batch)
        n = len(srt) - 1
        self.slowdown = _clamp(srt[n // 2], SLOWDOWN_MIN, SLOWDOWN_MAX)
        recent = sorted(list(self._batch)[-RECENT:])
        now = _clamp(recent[(len(recent) - 1) // 2], SLOWDOWN_MIN, SLOWDOWN_MAX)
        self.slowdown_now = max(self.slowdown, now)
        self.slowdown_tail = _clamp(srt[(9 * n) // 10], SLOWDOWN_MIN, SLOWDOWN_MAX)
        self.slowdown_top = _clamp(srt[n], SLOWDOWN_MIN, SLOWDOWN_MAX)

    def observe_request(self, late: bool) -> None:
        """An admitted request completed, after its stage deadline (`late`) or not."""
        if self.late_target <= 0.0:
            return
        if late:
            self.stretch = min(STRETCH_MAX, self.stretch * (1.0 + STEP))
        elif self.stretch > 1.0:
            self.stretch = max(1.0, self.stretch * self._down)

    def observe_reply(self, delay_s: float) -> None:
        """An answer was taken up `delay_s` after its batch ended."""
        if self.late_target <= 0.0:
            return
        self._reply.append(max(0.0, delay_s))
        srt = sorted(self._reply)
        self.reply_s = srt[(9 * (len(srt) - 1)) // 10]

    # ------------------------------------------------------------------ views
    def overrun_end(self, start: float, predicted_raw_s: float, now: float, end: float) -> float:
        """When a batch started at `start`, predicted (at the profile's rate) to take
        `predicted_raw_s` and to end at `end` (<= `now`), still running at `now`, is now
        expected to end (see the module docstring)."""
        if predicted_raw_s <= 0.0:
            return now
        ran = (now - start) / predicted_raw_s
        longer = sorted(x for x in self._batch if x > ran)
        if longer:
            return start + predicted_raw_s * longer[(len(longer) - 1) // 2]
        return now + (now - end)

    @staticmethod
    def decayed(k: float, decay: float) -> float:
        """Factor `k` after `decay` of it is left (1.0 = none decayed)."""
        return k if k == 1.0 else 1.0 + (k - 1.0) * decay


__all__ = ["STEP", "STRETCH_MAX", "LaneCalibration"]
