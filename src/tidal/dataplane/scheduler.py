"""`GroupScheduler`: the synchronous, clock-free state machine of one (stage, variant) lane.

The split follows vLLM v1's scheduler (`schedule()` / `update_from_output()` against the engine
loop that executes them): this object decides, its drivers execute. Three drivers run it:
the live gateway's asyncio loop (`tidal.dataplane.group`), the Ray substrate (the gateway
routes to actors through the same groups) and the simulator's event heap
(`tidal.sim.reference`). None of them re-implements the queue, admission, the batching
decision, the rate estimate or the replica states.

It owns:
- the EDF queue (`tidal.dataplane.edf.EDFQueue`) and the rows/bytes queued;
- admission (`push`, `quote`): its fast path (empty queue, an idle replica), else
  `tidal.dataplane.bounds.admit_rows` on the stage deadline (the deadline minus
  `downstream_s`) with the replicas' *predicted* busy-until times; a `quote` that admitted
  is carried to the same request's `push` while the lane is unchanged (priced once);
- the batching decision (`step`): `tidal.dataplane.batcher.decide_n`, then the replica and
  the batch's trim (`tidal.dataplane.dispatch_rules`), with `SchedulerConfig`'s rules;
- the rate estimate (`ArrivalRate`: arrivals offered to the lane per whole clock second);
- each replica's state: starting, ready, busy (ready with work in flight), draining, sick, dead.

Time is passed in (`now`, clock seconds); the scheduler never reads a clock and never sleeps.

The driver's contract:
- call `push(req, now)` on each arrival routed to this lane, then `step(now)`;
- call `step(now)` after anything that may free capacity (`on_done`, `on_replica_ready`,
  `on_replica_died`, a plan change), and `on_timer(now)` when the last `WakeAt` fires;
- execute the actions `step` returns, in order: `Expired` (answer 504), `Dispatch` (run the
  batch on `dispatch.replica`, then `on_done(dispatch.batch_id, now)`), `WakeAt` (keep ONE
  timer per lane: a new `WakeAt` replaces the previous one; it is only ever emitted earlier
  than the one armed);
- stop a replica when `on_replica_removed` or `on_done` says so.

Bounded work (issue 13) lives here too: rows/bytes queued, `cancel(req_id)`, `inflight` (for
a watchdog), `mark_sick`. The lane's types (states, batches, actions) are `tidal.dataplane.lane`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from tidal.dataplane.batcher import decide_n
from tidal.dataplane.bounds import LaneCaps, admit_rows, drain_time, over_cap
from tidal.dataplane.calibration import LaneCalibration
from tidal.dataplane.dispatch_rules import free_replica, head_prefix, split_hopeless
from tidal.dataplane.edf import EDFQueue
from tidal.dataplane.lane import (
    BUSY,
    DEAD,
    DRAINING,
    READY,
    SICK,
    STARTING,
    STOPPED,
    Action,
    ArrivalRate,
    Batch,
    Dispatch,
    Expired,
    Finished,
    LaneReplica,
    LatencyBC,
    WakeAt,
)
from tidal.dataplane.request import ADMITTED_NO_CHECK, Admitted, QueuedRequest, Refused
from tidal.dataplane.scheduler_config import SchedulerConfig

INF = math.inf
ADAPT_HALF_LIFE_S = 5.0
"""Half-life of the learned slowdown while a lane has nothing in flight (after 1 s idle)."""
QUOTE_TTL_S = 0.002
"""How long a `quote` that admitted stands for the `push` of the same request (same deadline
and rows, the lane unchanged since): the request is then priced once, at arrival."""


class GroupScheduler:
    """The lane's state machine (see the module docstring for the driver's contract)."""

    def __init__(
        self,
        latency_s: LatencyBC,
        config: SchedulerConfig | None = None,
        name: str = "",
    ) -> None:
        self.latency_s = latency_s
        self.config = config or SchedulerConfig()
        self.name = name
        self.queue: EDFQueue[QueuedRequest] = EDFQueue()
        self.replicas: dict[int, LaneReplica] = {}
        self.inflight: dict[int, Batch] = {}
        self.max_batch = 1
        self.downstream_s = 0.0
        """Later stages' batch-1 time: admission checks `deadline - downstream_s`."""
        self.rate = ArrivalRate()
        self.last_arrival = -INF
        self.last_free = -INF
        self.queued_rows = 0
        self.queued_bytes = 0
        self.cancelled = 0
        self.caps: LaneCaps | None = None
        self.adapt = self.config.adapt_latency
        self.calib = LaneCalibration(self.config.late_target)
        """Issue 13: the replicas' real service rate (`slowdown`, when `adapt_latency`) and
        the feedback margin (`stretch`, when `late_target` > 0); see
        `tidal.dataplane.calibration`. Both decay toward 1 while nothing is in flight
        (half-life `ADAPT_HALF_LIFE_S` after 1 s idle), so a lane that refuses everything
        recovers."""
        self.trace: list[tuple[str, float, tuple[int, ...]]] | None = None
        """Set to [] to log (event, time, ids) for exact-trace tests."""
        self._armed = INF
        self._next_batch = 0
        self._expired: list[QueuedRequest] = []
        self._epoch = 0  # bumped by replica and calibration changes (the carried quote's key)
        self._quoted: tuple[float, int, float, tuple[float, ...], Admitted] | None = None
        c = self.config
        self._hold_latest = c.hold_anchor == "latest"

    @property
    def slowdown(self) -> float:
        """Measured / predicted batch time (median of recent batches; 1.0 when not adapting)."""
        return self.calib.slowdown

    @property
    def stretch(self) -> float:
        """The feedback margin on a request's predicted wait (1.0 when off)."""
        return self.calib.stretch

    # ------------------------------------------------------------------ replicas
    def add_replica(self, rep: LaneReplica) -> None:
        """Track `rep` (normally `starting`; `ready` for warm replicas)."""
        self._epoch += 1
        if rep.id in self.replicas:
            raise ValueError(f"replica {rep.id} is already in lane {self.name!r}")
        if rep.applied_cores is None and rep.state == READY:
            rep.applied_cores = rep.cores
        self.replicas[rep.id] = rep

    def on_replica_ready(self, rid: int, now: float) -> None:
        """`rid` is warm: it takes batches from the next `step`."""
        self._epoch += 1
        r = self.replicas[rid]
        r.state = READY
        r.busy_until = now
        if r.applied_cores is None:
            r.applied_cores = r.cores

    def set_cores(self, rid: int, cores: float) -> None:
        """New allocation of `rid`, in force from its next batch."""
        self._epoch += 1
        self.replicas[rid].cores = cores

    def on_resized(self, rid: int, cores: float) -> None:
        r = self.replicas.get(rid)
        if r is not None:
            r.applied_cores = cores

    def reserve(self, rid: int, now: float) -> None:
        """The driver runs a non-batch operation (e.g. an idle resize) on `rid`: busy."""
        self._epoch += 1
        r = self.replicas[rid]
        r.inflight += 1
        r.busy_until = max(r.busy_until, now)

    def release(self, rid: int, now: float) -> bool:
        """End of a `reserve`d operation. True when the replica should now be stopped."""
        r = self.replicas.get(rid)
        if r is None:
            return False
        return self._idle_one(r, now)

    def on_replica_removed(self, rid: int) -> bool:
        """Retire `rid`: no new batches. True when the driver may stop it now (idle or not
        started); False while a batch is in flight (`on_done` later says `stop`)."""
        self._epoch += 1
        r = self.replicas.get(rid)
        if r is None:
            return False
        if r.inflight:
            r.state = DRAINING
            return False
        r.state = STOPPED
        del self.replicas[rid]
        return True

    def mark_sick(self, rid: int) -> None:
        """`rid` is unhealthy (e.g. a batch overdue): no new batches, not counted by
        admission; the driver kills it and reports `on_replica_died`."""
        self._epoch += 1
        r = self.replicas.get(rid)
        if r is not None and r.state in (READY, DRAINING, STARTING):
            r.state = SICK

    def on_replica_died(
        self, rid: int, now: float
    ) -> tuple[list[QueuedRequest], list[QueuedRequest]]:
        """`rid` is gone. Its in-flight requests go back to the queue (original deadlines)
        when retries and the deadline allow. Returns (requeued, failed); cancelled requests
        are dropped."""
        self._epoch += 1
        r = self.replicas.pop(rid, None)
        requeued: list[QueuedRequest] = []
        failed: list[QueuedRequest] = []
        if r is None:
            return requeued, failed
        r.state = DEAD
        r.inflight = 0
        for bid in [b.id for b in self.inflight.values() if b.replica is r]:
            b = self.inflight.pop(bid)
            for q in b.requests:
                if q.id in b.cancelled:
                    continue
                if q.retries < self.config.max_retries and (
                    not self.config.expire or q.deadline > now
                ):
                    q.retries += 1
                    self._enqueue(q)
                    requeued.append(q)
                else:
                    failed.append(q)
        return requeued, failed

    def ready(self) -> list[LaneReplica]:
        """Ready replicas (idle or busy), in id order."""
        return [r for r in self.replicas.values() if r.state == READY]

    def routable(self) -> bool:
        """Can this lane take a request now: a ready replica, or, serving late (admission
        off), any replica that is ready or starting, or (admission on) a replica starting
        with an expected ready time (a replacement: admission decides by the deadline)."""
        for r in self.replicas.values():
            if r.state == READY or (
                r.state == STARTING and (not self.config.admission or r.expected_ready < INF)
            ):
                return True
        return False

    # ------------------------------------------------------------------ requests
    def _enqueue(self, req: QueuedRequest) -> None:
        self.queue.push(req)
        self.queued_rows += req.rows
        self.queued_bytes += req.nbytes

    def _dequeued(self, reqs: Iterable[QueuedRequest]) -> None:
        for q in reqs:
            self.queued_rows -= q.rows
            self.queued_bytes -= q.nbytes

    def push(self, req: QueuedRequest, now: float) -> Admitted | Refused:
        """Offer `req` to the lane at `now`: expire the queue, admit (unless off), queue.

        Refused(503, "refused", reason, retry_after_s) when its stage deadline cannot be met.
        The caller then calls `step(now)`."""
        self.rate.count(now)
        c = self.config
        q = self.queue
        if self._quoted is not None and self._quoted[3] != self._key():
            self._quoted = None  # the lane changed since the quote: price again
        if c.expire and q:
            exp = q.expire(now)
            if exp:
                self._dequeued(exp)
                self._expired += exp
        if self.caps is not None:
            full = self._over_cap(req, now)
            if full is not None:
                self._log("refuse", now, (req.id,))
                return full
        verdict: Admitted | Refused | None = self._quoted and self._carried(req, now)
        if verdict is None:
            verdict = self._admit(req, now) if c.admission else ADMITTED_NO_CHECK
        if isinstance(verdict, Refused):
            self._log("refuse", now, (req.id,))
            return verdict
        self._enqueue(req)
        self.last_arrival = now
        self._log("admit", now, (req.id,))
        return verdict

    def quote(self, rows: int, deadline: float, now: float) -> Refused | None:
        """What admission would answer now to a request of `rows` rows due at `deadline`,
        without queueing anything (early refusal before a body is parsed,
        `tidal.dataplane.early`): the Refused verdict, or None when it would be admitted (or
        admission is off)."""
        if not self.config.admission:
            return None
        v = self._admit(QueuedRequest(-1, now, deadline, rows=max(1, rows)), now)
        if isinstance(v, Refused):
            return v
        self._quoted = (deadline, max(1, rows), now, self._key(), v)
        return None

    def _key(self) -> tuple[float, ...]:
        """What admission reads that changes while serving (a carried quote's key)."""
        return (self._epoch, self._next_batch, len(self.inflight), len(self.queue),
                self.queued_rows, self.max_batch, self.downstream_s, self.last_free)  # fmt: skip

    def _carried(self, req: QueuedRequest, now: float) -> Admitted | None:
        """The last `quote`'s Admitted verdict when it was for this request (same deadline
        and rows, at most `QUOTE_TTL_S` ago, the lane unchanged since: `push` checks
        `_key`): the request is priced once, at arrival (`tidal.dataplane.early`), not
        again here. None: price it."""
        deadline, rows, at, _, v = self._quoted  # type: ignore[misc]
        self._quoted = None
        if deadline == req.deadline and rows == req.rows and 0.0 <= now - at <= QUOTE_TTL_S:
            return v
        return None

    def pressured(self) -> bool:
        """Something is queued, or no ready replica is idle: an arrival may be refused."""
        if self.queue:
            return True
        return not any(r.state == READY and not r.inflight for r in self.replicas.values())

    def _admit(self, req: QueuedRequest, now: float) -> Admitted | Refused:
        margin = self.config.margin
        down = self.downstream_s + self.calib.reply_s
        deadline = req.deadline - down
        lat = self.latency_s
        cal = self.calib
        k = self._factor(now, cal.slowdown_now)  # the recent speed when slower (calibration)
        if k != 1.0:

            def lat(b: int, c: float) -> float:
                return k * self.latency_s(b, c)

        stretch = self._factor(now, cal.stretch)
        # the request's own batch: at the tail speed as far as late answers ask for it (the
        # stretch), at the median when they do not (so low load is not refused on the tail)
        tail = 1.0
        if cal.late_target:
            tail = min(stretch, max(1.0, self._factor(now, cal.slowdown_top) / k))
        q = self.queue
        if not q:  # fast path: what `admit_rows` concludes for a batch of one
            for r in self.replicas.values():
                if r.state == READY and not r.inflight:
                    service = margin * lat(req.rows, r.cores)
                    if now + tail * service <= deadline:
                        return Admitted(now + service)
                    break
        head = q.peek() if self.config.batch_deadline else None
        # Priced in rows: the rows queued ahead (EDF) at the batch sizes in force, on the
        # ready replicas, else on a replacement still starting (tidal.dataplane.bounds).
        return admit_rows(
            req,
            now,
            queue=self.queue,
            queued_rows=self.queued_rows,
            replicas=(self.config.price_overrun and self._overrun(now)) or self.replicas.values(),
            latency_s=lat,
            max_batch=self.max_batch,
            margin=margin,
            deadline=deadline,
            stretch=stretch,
            head_deadline=None if head is None else head.deadline - down,
            tail=tail,
        )

    def _overrun(self, now: float) -> list[LaneReplica] | None:
        """The replicas as admission should see them at `now` when a batch runs past its
        predicted end (None when none does): that replica busy until the batch's expected
        end (`LaneCalibration.overrun_end`), not free now. Views: nothing is changed."""
        late = [b for b in self.inflight.values() if b.replica.busy_until < now]
        if not late:
            return None
        reps = dict(self.replicas)
        for b in late:
            r = reps.get(b.replica.id, b.replica)
            raw = self.latency_s(b.rows, r.cores)
            end = self.calib.overrun_end(b.start, raw, now, b.predicted_end)
            if end > r.busy_until:
                reps[r.id] = LaneReplica(r.id, r.cores, r.state, r.inflight, end,
                                         r.applied_cores, r.expected_ready)  # fmt: skip
        return list(reps.values())

    def _over_cap(self, req: QueuedRequest, now: float) -> Refused | None:
        """Refused(503) at once when `req` would pass the lane's rows or bytes cap."""
        caps = self.caps
        assert caps is not None
        if self.queued_rows + req.rows <= caps.rows and self.queued_bytes + req.nbytes <= (
            caps.bytes
        ):
            return None
        ready = [r for r in self.replicas.values() if r.state == READY]
        drain = drain_time(
            self.queued_rows,
            [max(now, r.busy_until) for r in ready],
            [r.cores for r in ready],
            self.latency_s,
            max(1, self.max_batch * max(1, self.queued_rows // max(1, len(self.queue)))),
            now,
        )
        v = over_cap(caps, self.queued_rows, self.queued_bytes, req.rows, req.nbytes, drain)
        return None if v is None else Refused(503, "refused", v.reason, v.retry_after_s)

    def cancel(self, req_id: int) -> str | None:
        """The client went away. "queued": removed from the queue; "inflight": its batch
        runs on, its result is dropped at `on_done` (counted in `cancelled`); None: unknown
        to this lane."""
        r = self.queue.remove(req_id)
        if r is not None:
            self._dequeued((r,))
            self.cancelled += 1
            return "queued"
        for b in self.inflight.values():
            for q in b.requests:
                if q.id == req_id and q.id not in b.cancelled:
                    b.cancelled.add(req_id)
                    self.cancelled += 1
                    return "inflight"
        return None

    def drain(self) -> list[QueuedRequest]:
        """Remove and return every queued request (shutdown)."""
        out = self.queue.drain()
        self._dequeued(out)
        return out

    # ------------------------------------------------------------------ decisions
    def on_timer(self, now: float) -> list[Action]:
        """The lane's timer fired (possibly a little early): forget it, then `step`."""
        self._armed = INF
        return self.step(now)

    def step(self, now: float) -> list[Action]:
        """Expire, then dispatch every batch the batcher wants at `now` (Dispatch), else
        say when to look again (WakeAt). Never reads a clock."""
        out: list[Action] = []
        c = self.config
        q = self.queue
        if c.expire and q:
            exp = q.expire(now)
            if exp:
                self._dequeued(exp)
                self._expired += exp
        if self._expired:
            out.append(Expired(self._expired))
            self._log("expire", now, tuple(r.id for r in self._expired))
            self._expired = []
        wake = INF
        lat_bc = self.latency_s
        while q:
            rep = free_replica(self.replicas.values(), now, c.pipeline_depth, c.prefetch_s)
            if rep is None:
                break
            cores = rep.cores
            head = q.peek()
            assert head is not None

            def lat(b: int, c: float = cores) -> float:
                return lat_bc(b, c)

            n_ready = 0
            for r in self.replicas.values():
                if r.state == READY:
                    n_ready += 1
            rate = self.rate.rate(now) / n_ready if n_ready else 0.0
            hold = c.hold_fraction * lat(1) if c.hold_fraction > 0.0 else 0.0
            anchor = head.arrival
            if self._hold_latest:
                anchor = max(anchor, self.last_arrival, self.last_free)
            dec = decide_n(len(q), head.deadline, now, self.max_batch, lat, rate, hold, anchor)
            if dec is None:
                break
            if dec.dispatch_at > now:
                wake = dec.dispatch_at
                break
            reqs = q.pop_batch(dec.size)
            f = self._factor(now)
            start = max(now, rep.busy_until) if rep.inflight else now
            down = self.downstream_s + self.calib.reply_s
            if c.expire_hopeless and c.expire:  # tidal.dataplane.dispatch_rules
                reqs, gone = split_hopeless(reqs, start, cores, f, down, lat_bc)
                if gone:
                    self._dequeued(gone)
                    self._log("expire", start, tuple(x.id for x in gone))
                    out.append(Expired(gone))
                if not reqs:
                    continue
            if c.batch_deadline and len(reqs) > 1:
                ft = max(f, self._factor(now, self.calib.slowdown_tail))
                keep = head_prefix(reqs, start, cores, ft, down, lat_bc)
                for x in reqs[keep:]:
                    q.push(x)
                reqs = reqs[:keep]
            self._dequeued(reqs)
            rows = 0
            for x in reqs:
                rows += x.rows
            pred = lat_bc(rows, cores) * f  # on rows, at the measured rate
            rep.busy_until = start + pred
            rep.inflight += 1
            self._next_batch += 1
            b = Batch(self._next_batch, rep, reqs, rows, now, rep.busy_until)
            self.inflight[b.id] = b
            self._log(f"dispatch/r{rep.id}", now, tuple(x.id for x in reqs))
            out.append(Dispatch(b))
        if q and c.expire and c.expire_timer:
            head = q.peek()
            if head is not None and head.deadline < wake:
                wake = head.deadline
        if wake < self._armed:
            self._armed = wake
            self._log("wait", wake, ())
            out.append(WakeAt(wake))
        return out

    def on_done(self, batch_id: int, now: float) -> Finished | None:
        """Batch `batch_id` ended at `now` (with a result or an error: the driver answers).
        None when the batch is unknown (already resolved by `on_replica_died`)."""
        b = self.inflight.pop(batch_id, None)
        if b is None:
            return None
        cal = self.calib
        if self.adapt:
            # the lane was idle before this batch: the old ratios decay
            cal.observe_batch(self.latency_s(b.rows, b.replica.cores), now - b.start,
                              self._decay(b.start))  # fmt: skip
        self.last_free = now
        self._log("done", now, tuple(r.id for r in b.requests))
        reqs = b.requests
        if b.cancelled:
            reqs = [r for r in reqs if r.id not in b.cancelled]
        stop = self._idle_one(b.replica, now)
        return Finished(b, reqs, tuple(sorted(b.cancelled)), stop)

    def _decay(self, now: float) -> float:
        """How much of the learned slowdown is left after the idle time before `now`."""
        if self.inflight:
            return 1.0
        idle = now - self.last_free - 1.0
        return 0.5 ** (idle / ADAPT_HALF_LIFE_S) if idle > 0 else 1.0

    def on_answered(self, req: QueuedRequest, finish: float, now: float) -> None:
        """The driver took up `req`'s answer at `now`, its batch having ended at `finish`
        (the live gateway calls it; the feedback margin and the answer path,
        `tidal.dataplane.calibration`, learn from it). No effect unless `late_target` > 0.
        Late counts from `now` plus the answer path's learned delay (`reply_s`): what is
        left of the answer's way (encoding, the write, the client's read) goes through the
        same busy loop and is not seen here, so an answer with less slack than that counts
        as late (measured: about as many 200s were late at the client as at the server)."""
        self._epoch += 1
        cal = self.calib
        if cal.late_target > 0.0 and self.config.admission:
            cal.observe_reply(now - finish)
            cal.observe_request(now + cal.reply_s > req.deadline - self.downstream_s)

    def _factor(self, now: float, k: float | None = None) -> float:
        """The factor `k` (default: the slowdown) in force at `now`, decayed toward 1 while
        the lane is idle."""
        k = self.calib.slowdown if k is None else k
        if k == 1.0:
            return k
        return 1.0 + (k - 1.0) * self._decay(now)

    def _idle_one(self, r: LaneReplica, now: float) -> bool:
        r.inflight = max(0, r.inflight - 1)
        if r.inflight == 0:
            r.busy_until = now
            if r.state == DRAINING:
                r.state = STOPPED
                self.replicas.pop(r.id, None)
                return True
        return False

    # ------------------------------------------------------------------ views
    def idle(self) -> bool:
        """No queued request and nothing in flight."""
        return not self.queue and not any(r.inflight for r in self.replicas.values())

    def in_flight_requests(self) -> int:
        return sum(len(b.requests) - len(b.cancelled) for b in self.inflight.values())

    def _log(self, ev: str, t: float, ids: tuple[int, ...]) -> None:
        if self.trace is not None:
            self.trace.append((ev, t, ids))


# The lane's types are re-exported: drivers import them from here.
__all__ = [
    "ADAPT_HALF_LIFE_S",
    "Action",
    "ArrivalRate",
    "BUSY",
    "Batch",
    "DEAD",
    "DRAINING",
    "Dispatch",
    "Expired",
    "Finished",
    "GroupScheduler",
    "LaneReplica",
    "LatencyBC",
    "READY",
    "SICK",
    "STARTING",
    "STOPPED",
    "SchedulerConfig",
    "WakeAt",
]
