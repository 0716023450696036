"""Reference data plane: the simulator's event-heap driver of the data plane's own
`GroupScheduler` (one per (stage, variant) lane) and `Router` (one per stage). Only replicas
and time are simulated: this module holds no queue, admission, batching or rate logic.

Semantics (the fast kernel in `tidal.sim.fast` mirrors them exactly; a test compares the two
request by request):

- Time is integer microseconds; the scheduler gets seconds (``us / 1e6``).
- Events with equal times: heap events (batch completions, lane timers) first, in the order
  they were scheduled (a global sequence number), then entry arrivals in arrival order.
- An arrival at a stage is routed by the stage's `Router` (smooth weighted round robin on the
  plan's weights over lanes with a ready replica; none: refused), then offered to the lane's
  scheduler (`push`: expiry, admission), then the lane is stepped.
- The scheduler's actions: `Dispatch` runs the batch on its replica for the simulated
  service time (`tidal.sim.latency`: the profile's l(b,c) x the k-th noise factor, k counting
  batches in dispatch order); `Expired` records the requests as expired at that time;
  `WakeAt(t)` sets the lane's single timer to ``max(now + 1 us, ceil(t))`` (replacing the
  previous one). Timers are scheduled at once, batch completions at the end of the event
  (in dispatch order): the asyncio driver arms timers synchronously and starts each batch in
  a task that runs after the event's other work, so among events due at the same time the
  order is the live one.
- A completed batch (`on_done`) records each request of the last stage (``late`` if it
  finished after its deadline, else ``ok``), then the lane is stepped; at an earlier stage the
  lane is stepped first, then each request moves, in batch order, to the next stage at the
  same time (the live order: the group pumps before the requests' coroutines resume).
- Control changes (replicas added, removed, resized; batch and weights) mark their lane;
  `kick(now)` steps the marked lanes.
- The scheduler sees predicted latencies (``predict``, default the lanes' own model) and
  predicted busy-until times, as the live gateway does; the simulated time of a batch is
  known only to this driver.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tidal.dataplane.request import QueuedRequest, Refused
from tidal.dataplane.routing import Router
from tidal.dataplane.scheduler import (
    READY,
    Action,
    Dispatch,
    Expired,
    GroupScheduler,
    LaneReplica,
    SchedulerConfig,
    WakeAt,
)
from tidal.sim.config import CAUSES, EXPIRED, LATE, OK, REFUSED, SIM_SCHEDULER, UNFINISHED, US
from tidal.sim.latency import (
    NOISE_LEN,
    QUOTA_PERIOD_US,
    VariantLatency,
    quota_rate,
    quota_run,
    service_us,
)
from tidal.sim.monitor import ServiceSeries

if TYPE_CHECKING:  # the queue type only; the queue itself lives in the scheduler
    from tidal.dataplane.edf import EDFQueue

NEED_INPUT = 1
REACHED = 0
INF = 1 << 62
_DONE, _TIMER = 0, 1


@dataclass(slots=True, eq=False)
class SimRequest(QueuedRequest):
    """A simulated request: arrival and deadline also in integer us; `acc` accumulates the
    served variants' accuracy (product or sum)."""

    a_us: int = 0
    d_us: int = 0
    acc: float = 1.0


@dataclass(eq=False)
class SimReplica(LaneReplica):
    stage: int = 0
    lane: int = 0
    until_us: int = 0  # simulated end of the work in flight (pipelining queues behind it)
    q_period: int = -1  # the CPU quota's period last charged (`cpu_quota`) and its use
    q_used: float = 0.0


@dataclass
class Lane:
    lat: VariantLatency
    accuracy: float
    sched: GroupScheduler
    weight: float = 0.0
    timer_seq: int = -1
    pred: VariantLatency | None = None
    dirty: bool = False
    scale: float = 1.0  # the machine's slowdown: batches take scale x l(b, c)

    @property
    def queue(self) -> EDFQueue[QueuedRequest]:
        return self.sched.queue

    @property
    def batch(self) -> int:
        return self.sched.max_batch


@dataclass
class StageCounters:
    """Cumulative counters of one stage (the monitor differences them over windows)."""

    arrivals: int = 0
    completions: int = 0
    busy_core_us: float = 0.0


class ReferenceDataPlane:
    """Multi-stage, multi-variant data plane: event heap over the dataplane's schedulers."""

    def __init__(
        self,
        lanes: list[list[tuple[VariantLatency, float]]],
        eps: np.ndarray,
        combine: str = "product",
        predict: list[list[VariantLatency]] | None = None,
        scheduler: SchedulerConfig = SIM_SCHEDULER,
        cpu_quota: bool = False,
    ) -> None:
        """`lanes[s]` = (latency model, accuracy) of each candidate variant of stage s;
        `eps[v_global]` = noise factors, v_global numbering lanes stage by stage; `predict`
        (same shape) = the latency models the schedulers plan with (default: the lanes'
        own); `scheduler`: every lane's config (`tidal.sim.config.SIM_SCHEDULER`: the
        scheduler's defaults without hold window and expiry timer); `cpu_quota`: a
        fractional-core replica's batches run under its CPU quota (`SimConfig.cpu_quota`)."""
        cfg = scheduler
        self.config = cfg
        self.cpu_quota = cpu_quota
        self.stages: list[list[Lane]] = []
        for s_i, st in enumerate(lanes):
            row = []
            for li, (lat, acc) in enumerate(st):
                pred = predict[s_i][li] if predict is not None else lat
                row.append(Lane(lat, acc, GroupScheduler(pred.l_s, cfg, f"{s_i}/{li}"), pred=pred))
            self.stages.append(row)
        self.routers = [Router() for _ in lanes]
        self.head: list[tuple[int, float] | None] = [None] * len(lanes)
        self.vindex: list[list[int]] = []
        k = 0
        for st in lanes:
            self.vindex.append(list(range(k, k + len(st))))
            k += len(st)
        self.eps = eps
        self.product = combine == "product"
        self.counters = [StageCounters() for _ in lanes]
        self.replicas: dict[int, SimReplica] = {}
        self.heap: list[tuple[int, int, int, tuple[int, int, int]]] = []
        self.seq = 0
        self.batches = 0
        self.now = 0
        self.arr = np.zeros(0, dtype=np.int64)
        self.dl = np.zeros(0, dtype=np.int64)
        self.ptr = 0
        self.horizon = 0
        self.next_id = 0
        self.out: list[tuple[int, int, int, int, int, float, int]] = []
        self.events: list[tuple[str, int, tuple[int, ...]]] | None = None
        """Set to [] to log (event, time_us, request ids) for exact-trace tests."""
        self._started: list[tuple[int, tuple[int, int, int]]] = []
        self._arr_s: np.ndarray | None = None
        self._busy_s: np.ndarray | None = None
        self._service: ServiceSeries | None = None
        self._shift = 0

    def record_series(
        self,
        arrivals: np.ndarray,
        busy_core_us: np.ndarray,
        service: ServiceSeries | None = None,
        shift_us: int = 0,
    ) -> None:
        """Count arrivals and busy core-us per (stage, second) into these arrays (at dispatch),
        and each batch's service time into `service` (at its end, as the live gateway).
        Second k is [k*1e6 - shift_us, (k+1)*1e6 - shift_us) (the monitor's seconds end at
        the control ticks, `tidal.sim.monitor`)."""
        self._arr_s, self._busy_s, self._service = arrivals, busy_core_us, service
        self._shift = shift_us

    # ---- inputs -------------------------------------------------------------------------
    def feed(self, arr_us: np.ndarray, dl_us: np.ndarray, horizon_us: int) -> None:
        """Append the next chunk of entry arrivals (sorted) and their deadlines; every arrival
        before `horizon_us` is now known (use ``INF`` for the last chunk)."""
        rest = slice(self.ptr, None)
        self.arr = np.concatenate([self.arr[rest], arr_us])
        self.dl = np.concatenate([self.dl[rest], dl_us])
        self.ptr = 0
        self.horizon = horizon_us

    # ---- control-plane hooks -----------------------------------------------------------
    def set_lane(self, stage: int, lane: int, batch: int, weight: float) -> None:
        ln = self.stages[stage][lane]
        ln.sched.max_batch, ln.weight, ln.dirty = batch, weight, True
        self.routers[stage].set_weights(
            {str(i): x.weight for i, x in enumerate(self.stages[stage])}
        )

    def set_head(self, stage: int, lane: int, cores: float) -> None:
        """The stage's first planned variant and its cores per replica: later stages' batch-1
        predicted latency is taken off the deadline at admission (`downstream_s`)."""
        self.head[stage] = (lane, cores)
        for s, st in enumerate(self.stages):
            down = self._downstream_s(s)
            for ln in st:
                ln.sched.downstream_s = down

    def _downstream_s(self, s: int) -> float:
        total = 0.0
        for k in range(s + 1, len(self.stages)):
            h = self.head[k]
            if h is not None:
                pred = self.stages[k][h[0]].pred
                assert pred is not None
                total += pred.l_s(1, h[1])
        return total

    def set_slowdown(self, stage: int, factor: float) -> None:
        """From now on every batch of `stage` takes `factor` x its profile time (the machine
        slowed down or sped up; the schedulers' predictions are unchanged)."""
        for ln in self.stages[stage]:
            ln.scale = factor

    def add_replica(self, rid: int, stage: int, lane: int, cores: float) -> None:
        """A ready replica (the simulated substrate adds replicas once warm)."""
        r = SimReplica(rid, cores, state=READY, stage=stage, lane=lane)
        self.replicas[rid] = r
        ln = self.stages[stage][lane]
        ln.sched.add_replica(r)
        ln.dirty = True

    def remove_replica(self, rid: int) -> None:
        """Stop routing to `rid`; an in-flight batch still completes."""
        r = self.replicas.pop(rid)
        ln = self.stages[r.stage][r.lane]
        ln.sched.on_replica_removed(rid)
        ln.dirty = True

    def resize_replica(self, rid: int, cores: float) -> None:
        """New cores, effective from the next batch."""
        r = self.replicas[rid]
        ln = self.stages[r.stage][r.lane]
        ln.sched.set_cores(rid, cores)
        ln.sched.on_resized(rid, cores)  # simulated resizes take effect at the next batch
        ln.dirty = True

    def kick(self, now: int) -> None:
        """Step every lane a control change touched, at `now`."""
        t = now / US
        for s, st in enumerate(self.stages):
            for li, ln in enumerate(st):
                if ln.dirty:
                    ln.dirty = False
                    self._execute(s, li, ln.sched.step(t), now)
        self._start_batches()

    def _start_batches(self) -> None:
        """Put the batches dispatched during the event on the heap, in dispatch order: as
        the asyncio driver, whose batch tasks run after the event's other work (its timers
        are armed at once, so they come first among events due at the same time)."""
        if self._started:
            heap = self.heap
            for end, key in self._started:
                heapq.heappush(heap, (end, self.seq, _DONE, key))
                self.seq += 1
            self._started.clear()

    # ---- observation --------------------------------------------------------------------
    def queue_len(self, stage: int) -> int:
        return sum(len(ln.sched.queue) for ln in self.stages[stage])

    def inflight(self, stage: int) -> int:
        return sum(ln.sched.in_flight_requests() for ln in self.stages[stage])

    def entry_budgets_ms(self, now: int) -> tuple[float, ...]:
        t = now / US
        b: list[float] = []
        for ln in self.stages[0]:
            b += [x * 1000.0 for x in ln.sched.queue.budgets(t)]
        return tuple(sorted(b))

    def drain(self) -> list[tuple[int, int, int, int, int, float, int]]:
        """Outcomes recorded since the last call: (id, arrival, deadline, end, cause, acc,
        variant index of the last stage reached or -1)."""
        out, self.out = self.out, []
        return out

    # ---- the event loop -----------------------------------------------------------------
    def run_until(self, t_stop: int) -> int:
        """Process every event with time <= t_stop. Returns NEED_INPUT when the arrivals fed
        so far end (at the horizon) before t_stop, else REACHED."""
        heap = self.heap
        n_arr = len(self.arr)
        while True:
            ta = int(self.arr[self.ptr]) if self.ptr < n_arr else self.horizon
            th = heap[0][0] if heap else INF
            if th <= ta:
                if th > t_stop:
                    break
                t, _, kind, (s, li, x) = heapq.heappop(heap)
                self._at(t)
                ln = self.stages[s][li]
                if kind == _DONE:
                    self._done(s, li, x, t)
                elif ln.timer_seq == x:
                    ln.timer_seq = -1
                    self._execute(s, li, ln.sched.on_timer(t / US), t)
                self._start_batches()
            else:
                if ta > t_stop:
                    break
                if self.ptr >= n_arr:
                    return NEED_INPUT
                self._at(ta)
                rid = self.next_id
                self.next_id += 1
                d = int(self.dl[self.ptr])
                req = SimRequest(rid, ta / US, d / US, a_us=ta, d_us=d)
                req.acc = 1.0 if self.product else 0.0
                self.ptr += 1
                self._arrive(req, 0, ta)
                self._start_batches()
        self._at(t_stop)
        return REACHED

    def _at(self, t: int) -> None:
        if t > self.now:
            self.now = t

    def _log(self, ev: str, t: int, ids: tuple[int, ...]) -> None:
        if self.events is not None:
            self.events.append((ev, t, ids))

    def _record(self, req: SimRequest, end: int, cause: int, lane: int) -> None:
        if self.events is not None:
            self._log(CAUSES[cause], end, (req.id,))
        self.out.append((req.id, req.a_us, req.d_us, end, cause, req.acc, lane))

    def _arrive(self, req: SimRequest, s: int, now: int) -> None:
        req.stage_index = s
        if self.events is not None:
            self._log(f"arrive@{s}", now, (req.id,))
        self.counters[s].arrivals += 1
        arr_s = self._arr_s
        if arr_s is not None and (sec := (now + self._shift) // US) < arr_s.shape[1]:
            arr_s[s, sec] += 1
        lanes = self.stages[s]
        pick = self.routers[s].pick(lambda name: lanes[int(name)].sched.routable())
        if pick is None:
            self._record(req, now, REFUSED, -1 if len(lanes) > 1 else 0)
            return
        li = int(pick)
        ln = lanes[li]
        t = now / US
        req.stage_arrival = t
        verdict = ln.sched.push(req, t)
        self._execute(s, li, ln.sched.step(t), now)
        if isinstance(verdict, Refused):
            self._record(req, now, REFUSED, li)

    def _execute(self, s: int, li: int, actions: list[Action], now: int) -> None:
        ln = self.stages[s][li]
        for a in actions:
            if isinstance(a, Dispatch):
                b = a.batch
                rep = b.replica
                assert isinstance(rep, SimReplica)
                reqs: list[SimRequest] = b.requests  # type: ignore[assignment]
                if self.events is not None:
                    self._log(f"dispatch@{s}/r{rep.id}", now, tuple(r.id for r in reqs))
                k = self.batches
                self.batches += 1
                eps = float(self.eps[self.vindex[s][li], k % NOISE_LEN])
                cores = rep.cores
                start = max(now, rep.until_us)
                if self.cpu_quota and cores != math.floor(cores):
                    n = len(reqs)
                    rate = quota_rate(ln.lat, n, cores)
                    fast_ms = ln.lat.l_ms(n, math.ceil(cores)) * ln.scale * eps
                    end, rep.q_period, rep.q_used = quota_run(
                        start,
                        fast_ms * 1000.0 * rate,
                        rate,
                        cores * QUOTA_PERIOD_US,
                        rep.q_period,
                        rep.q_used,
                    )
                    dur = end - start
                else:
                    dur = service_us(ln.lat.l_ms(len(reqs), cores) * ln.scale, eps)
                    end = start + dur
                rep.until_us = end
                self.counters[s].busy_core_us += dur * cores
                busy_s = self._busy_s
                if busy_s is not None and (sec := (now + self._shift) // US) < busy_s.shape[1]:
                    busy_s[s, sec] += dur * cores
                if self._service is not None:
                    self._service.add(s, end + self._shift, dur, len(reqs))
                self._started.append((end, (s, li, b.id)))
            elif isinstance(a, Expired):
                for r in a.requests:
                    self._record(r, now, EXPIRED, li)  # type: ignore[arg-type]
            elif isinstance(a, WakeAt):
                at = max(now + 1, math.ceil(a.t * US))
                if self.events is not None:
                    self._log(f"wait@{s}", at, ())
                ln.timer_seq = self.seq
                heapq.heappush(self.heap, (at, self.seq, _TIMER, (s, li, self.seq)))
                self.seq += 1

    def _done(self, s: int, li: int, bid: int, now: int) -> None:
        ln = self.stages[s][li]
        fin = ln.sched.on_done(bid, now / US)
        if fin is None:
            return
        self.counters[s].completions += len(fin.requests)
        acc = ln.accuracy
        reqs: list[SimRequest] = fin.requests  # type: ignore[assignment]
        for req in reqs:
            req.acc = req.acc * acc if self.product else req.acc + acc
        # The live stage tells its lane when each answer was taken up (`on_answered`: the
        # feedback margin learns the late share, `SchedulerConfig.late_target`); here at the
        # batch's end, after the lane's step as live (the requests' coroutines resume after
        # the group's pump). Only with the margin on: it does nothing else.
        answered = ln.sched.config.late_target > 0.0
        if s == len(self.stages) - 1:
            for req in reqs:
                self._record(req, now, LATE if now > req.d_us else OK, li)
            self._execute(s, li, ln.sched.step(now / US), now)
            if answered:
                for req in reqs:
                    ln.sched.on_answered(req, now / US, now / US)
            return
        # As live: the lane is stepped before the next stage sees the requests (the gateway
        # resolves their futures; their coroutines resume after the group's pump).
        self._execute(s, li, ln.sched.step(now / US), now)
        for req in reqs:
            if answered:
                ln.sched.on_answered(req, now / US, now / US)
            self._arrive(req, s + 1, now)

    def finish(self) -> None:
        """End of run: record what is still queued (expired or unfinished) or in flight."""
        now = self.now
        for st in self.stages:
            for li, ln in enumerate(st):
                for r in ln.sched.drain():
                    q: SimRequest = r  # type: ignore[assignment]
                    self._record(q, now, EXPIRED if q.d_us <= now else UNFINISHED, li)
                for bid in sorted(ln.sched.inflight):
                    for r in ln.sched.inflight[bid].requests:
                        self._record(r, now, UNFINISHED, li)  # type: ignore[arg-type]
                ln.sched.inflight.clear()
        self.heap.clear()
        for i in range(self.ptr, len(self.arr)):
            rid = self.next_id
            self.next_id += 1
            a, d = int(self.arr[i]), int(self.dl[i])
            self.out.append((rid, a, d, now, UNFINISHED, 0.0, -1))
        self.ptr = len(self.arr)
