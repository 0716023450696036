"""Reference data plane: the gateway's own EDFQueue, batcher and admission objects, run on a
SimClock by an event heap. Only replicas and time are simulated.

Semantics (the fast kernel in `tidal.sim.fast` mirrors them exactly; a test compares the two
request by request):

- Time is integer microseconds; the dataplane functions get seconds (``us / 1e6``).
- Events with equal times: heap events (batch completions, batcher timers) first, in the order
  they were scheduled (a global sequence number), then entry arrivals in arrival order.
- A stage has one *lane* per variant (its own EDF queue, max batch and replicas). Arrivals are
  routed to lanes with ready replicas by smooth weighted round-robin on the plan's weights.
- On arrival: expire the lane's queue (``EDFQueue.expire``), then ``admission.admit`` (if
  enabled), then push and try to dispatch.
- Dispatch (on arrival, completion, timer, or a control change): while the queue is non-empty
  and a ready replica is idle, take the idle replica with the most cores (lowest id on ties),
  expire the queue, and ask ``batcher.decide`` with that replica's l(b,c), the lane's arrival
  rate (arrivals in the previous whole second / ready replicas) and the hold window
  ``hold_fraction x l(1, c)`` (0 = off; the live gateway uses 10%). "Now" pops the batch and runs
  it; "later" sets the lane's single timer to ``max(now+1us, ceil(dispatch_at))``.
- A completed batch moves each request, in batch order, to the next stage at the same time, or
  records it: ``late`` if it finished after its deadline, else ``ok``.

Gateway mode (``gateway=True``; `tidal validate` uses it to model the live gateway,
`tidal.dataplane.stage` and `group`): admission and the batcher plan with each lane's
*predicted* latency (``predict``, e.g. the unscaled profile the gateway loads, while batches
take the simulated time of ``lanes``); a replica's busy-until seen by admission is its dispatch
time plus the predicted latency, not the simulated finish; admission checks the stage deadline
(the deadline minus the batch-1 predicted latency of the later stages' first planned variant)
with the gateway's fast path (empty queue and an idle replica); the batcher's rate is the
gateway's moving estimate over admitted requests (0.2 s spans, halved weight) and its hold
window is anchored at the latest of the head's arrival, the lane's latest admission and its
latest batch completion.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from tidal.core.clock import SimClock
from tidal.core.request import Request
from tidal.dataplane import admission, batcher
from tidal.dataplane.edf import EDFQueue
from tidal.sim.config import CAUSES, EXPIRED, LATE, OK, REFUSED, UNFINISHED, US
from tidal.sim.latency import NOISE_LEN, VariantLatency, service_us

NEED_INPUT = 1
REACHED = 0
INF = 1 << 62
_DONE, _TIMER = 0, 1


@dataclass(slots=True)
class Replica:
    rid: int
    stage: int
    lane: int
    cores: float
    busy: bool = False
    busy_until: int = 0
    batch: list[Request] = field(default_factory=list)
    alive: bool = True
    pred_until: int = 0  # gateway mode: dispatch + predicted latency (what admission sees)


@dataclass
class Lane:
    lat: VariantLatency
    accuracy: float
    queue: EDFQueue = field(default_factory=EDFQueue)
    batch: int = 1
    weight: float = 0.0
    reps: dict[int, Replica] = field(default_factory=dict)
    timer: int = -1
    timer_seq: int = -1
    cur_sec: int = -1
    cur_count: int = 0
    prev_count: int = 0
    swrr: float = 0.0
    pred: VariantLatency | None = None  # what admission/batcher plan with (None: lat)
    ewma: float = 0.0  # gateway mode: the live group's rate estimate
    ewma_n: int = 0
    ewma_t0: int = 0
    last_arrival: int = 0
    last_free: int = 0

    def ready(self) -> list[Replica]:
        return [r for r in self.reps.values() if r.alive]

    def rate(self, now: int) -> float:
        """Arrivals in the previous whole second, per ready replica (0 if none)."""
        sec = now // US
        if sec == self.cur_sec:
            c = self.prev_count
        elif sec == self.cur_sec + 1:
            c = self.cur_count
        else:
            c = 0
        n = len(self.ready())
        return c / n if n else 0.0

    def count_arrival(self, now: int) -> None:
        sec = now // US
        if sec != self.cur_sec:
            self.prev_count = self.cur_count if sec == self.cur_sec + 1 else 0
            self.cur_sec, self.cur_count = sec, 0
        self.cur_count += 1


@dataclass
class StageCounters:
    """Cumulative counters of one stage (the monitor differences them over windows)."""

    arrivals: int = 0
    completions: int = 0
    busy_core_us: float = 0.0


class ReferenceDataPlane:
    """Multi-stage, multi-variant data plane built from the dataplane's own objects."""

    def __init__(
        self,
        lanes: list[list[tuple[VariantLatency, float]]],
        eps: np.ndarray,
        admission_on: bool = True,
        combine: str = "product",
        hold_fraction: float = 0.0,
        predict: list[list[VariantLatency]] | None = None,
        gateway: bool = False,
    ) -> None:
        """`lanes[s]` = (latency model, accuracy) of each candidate variant of stage s;
        `eps[v_global]` = noise factors, v_global numbering lanes stage by stage; `predict`
        (same shape) = the latency models admission and the batcher plan with (default: the
        lanes' own); `gateway`: the live gateway's admission and batcher (module docstring)."""
        self.clock = SimClock()
        self.stages = [[Lane(lat, acc) for lat, acc in st] for st in lanes]
        for s_i, lane_list in enumerate(self.stages):
            for li, ln in enumerate(lane_list):
                ln.pred = predict[s_i][li] if predict is not None else ln.lat
        self.gateway = gateway
        self.head: list[tuple[int, float] | None] = [None] * len(lanes)
        self.vindex: list[list[int]] = []
        k = 0
        for st in lanes:
            self.vindex.append(list(range(k, k + len(st))))
            k += len(st)
        self.eps = eps
        self.admission_on = admission_on
        self.hold_fraction = hold_fraction
        self.product = combine == "product"
        self.counters = [StageCounters() for _ in lanes]
        self.replicas: dict[int, Replica] = {}
        self.heap: list[tuple[int, int, int, object]] = []
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
        ln.batch, ln.weight = batch, weight

    def set_head(self, stage: int, lane: int, cores: float) -> None:
        """The stage's first planned variant and its cores per replica (gateway mode: later
        stages' batch-1 latency is taken off the deadline at admission)."""
        self.head[stage] = (lane, cores)

    def _downstream_s(self, s: int) -> float:
        total = 0.0
        for k in range(s + 1, len(self.stages)):
            h = self.head[k]
            if h is not None:
                pred = self.stages[k][h[0]].pred
                assert pred is not None
                total += pred.l_s(1, h[1])
        return total

    def add_replica(self, rid: int, stage: int, lane: int, cores: float) -> None:
        r = Replica(rid, stage, lane, cores)
        self.replicas[rid] = r
        self.stages[stage][lane].reps[rid] = r

    def remove_replica(self, rid: int) -> None:
        """Stop routing to `rid`; an in-flight batch still completes."""
        r = self.replicas.pop(rid)
        r.alive = False
        del self.stages[r.stage][r.lane].reps[rid]

    def resize_replica(self, rid: int, cores: float) -> None:
        """New cores, effective from the next batch."""
        self.replicas[rid].cores = cores

    def kick(self, now: int) -> None:
        """Re-try dispatch on every lane at `now` (after control changes)."""
        for s, st in enumerate(self.stages):
            for li in range(len(st)):
                self._try_dispatch(s, li, now)

    # ---- observation --------------------------------------------------------------------
    def queue_len(self, stage: int) -> int:
        return sum(len(ln.queue) for ln in self.stages[stage])

    def inflight(self, stage: int) -> int:
        return sum(len(r.batch) for r in self.replicas.values() if r.stage == stage and r.busy)

    def entry_budgets_ms(self, now: int) -> tuple[float, ...]:
        t = now / US
        b: list[float] = []
        for ln in self.stages[0]:
            b += [x * 1000.0 for x in ln.queue.budgets(t)]
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
                t, _, kind, obj = heapq.heappop(heap)
                self._at(t)
                if kind == _DONE:
                    self._done(obj)  # type: ignore[arg-type]
                else:
                    assert isinstance(obj, tuple)
                    ts: int = obj[0]
                    tl: int = obj[1]
                    ln = self.stages[ts][tl]
                    if ln.timer_seq == obj[2]:
                        ln.timer, ln.timer_seq = -1, -1
                        self._try_dispatch(ts, tl, t)
            else:
                if ta > t_stop:
                    break
                if self.ptr >= n_arr:
                    return NEED_INPUT
                self._at(ta)
                rid = self.next_id
                self.next_id += 1
                req = Request(rid, ta / US, int(self.dl[self.ptr]) / US)
                req.meta["a"] = ta
                req.meta["d"] = int(self.dl[self.ptr])
                req.payload = 1.0 if self.product else 0.0
                self.ptr += 1
                self._arrive(req, 0, ta)
        self._at(t_stop)
        return REACHED

    def _at(self, t: int) -> None:
        if t > self.now:
            self.now = t
            self.clock.advance_to(t / US)

    def _route(self, s: int) -> int:
        lanes = self.stages[s]
        if len(lanes) == 1:
            return 0
        live = [i for i, ln in enumerate(lanes) if ln.weight > 0 and ln.reps]
        if not live:
            return max(range(len(lanes)), key=lambda i: (lanes[i].weight, -i))
        total = sum(lanes[i].weight for i in live)
        for i in live:
            lanes[i].swrr += lanes[i].weight
        pick = max(live, key=lambda i: (lanes[i].swrr, -i))
        lanes[pick].swrr -= total
        return pick

    def _log(self, ev: str, t: int, reqs: list[Request]) -> None:
        if self.events is not None:
            self.events.append((ev, t, tuple(r.id for r in reqs)))

    def _record(self, req: Request, end: int, cause: int, lane: int) -> None:
        m = req.meta
        self._log(CAUSES[cause], end, [req])
        self.out.append((req.id, m["a"], m["d"], end, cause, float(req.payload), lane))

    def _arrive(self, req: Request, s: int, now: int) -> None:
        req.stage_index = s
        self._log(f"arrive@{s}", now, [req])
        self.counters[s].arrivals += 1
        li = self._route(s)
        ln = self.stages[s][li]
        ln.count_arrival(now)
        t = now / US
        for r in ln.queue.expire(t):
            self._record(r, now, EXPIRED, li)
        if self.gateway:
            if self.admission_on and not self._gateway_admit(req, s, ln, now):
                self._record(req, now, REFUSED, li)
                return
            ln.ewma_n += 1
            ln.last_arrival = now
            if now - ln.ewma_t0 >= 200_000:
                ln.ewma = 0.5 * ln.ewma + 0.5 * ln.ewma_n / ((now - ln.ewma_t0) / US)
                ln.ewma_n, ln.ewma_t0 = 0, now
        elif self.admission_on:
            reps = sorted(ln.ready(), key=lambda r: r.rid)
            v = admission.admit(
                req,
                ln.queue.count_before(req.deadline),
                len(ln.queue),
                [r.busy_until / US for r in reps],
                [r.cores for r in reps],
                ln.lat.l_s,
                ln.batch,
                t,
            )
            if not v.accepted:
                self._record(req, now, REFUSED, li)
                return
        ln.queue.push(req)
        self._try_dispatch(s, li, now)

    def _gateway_admit(self, req: Request, s: int, ln: Lane, now: int) -> bool:
        """`tidal.dataplane.stage.Stage.submit`'s admission: the fast path, else `admit` on
        the stage deadline with predicted busy-until times."""
        pred = ln.pred
        assert pred is not None
        t = now / US
        down = self._downstream_s(s)
        reps = sorted(ln.ready(), key=lambda r: r.rid)
        if not ln.queue:
            idle = [r for r in reps if not r.busy]
            if idle and t + pred.l_s(1, idle[0].cores) + down <= req.deadline:
                return True
        probe = Request(req.id, req.arrival, req.deadline - down)
        v = admission.admit(
            probe,
            ln.queue.count_before(req.deadline),
            len(ln.queue),
            [max(t, r.pred_until / US) if r.busy else t for r in reps],
            [r.cores for r in reps],
            pred.l_s,
            ln.batch,
            t,
        )
        return v.accepted

    def _try_dispatch(self, s: int, li: int, now: int) -> None:
        ln = self.stages[s][li]
        t = now / US
        while ln.queue:
            idle = [r for r in ln.reps.values() if not r.busy]
            if not idle:
                return
            rep = max(idle, key=lambda r: (r.cores, -r.rid))
            for r in ln.queue.expire(t):
                self._record(r, now, EXPIRED, li)
            if not ln.queue:
                return
            cores = rep.cores
            lat = ln.pred
            assert lat is not None

            def l_of(b: int, c: float = cores, lat: VariantLatency = lat) -> float:
                return lat.l_s(b, c)

            hold = self.hold_fraction * lat.l_s(1, cores)
            if self.gateway:
                head = ln.queue.peek()
                assert head is not None
                n_ready = max(1, len(ln.ready()))
                anchor = max(head.arrival, ln.last_arrival / US, ln.last_free / US)
                dec = batcher.decide_n(
                    len(ln.queue), head.deadline, t, ln.batch, l_of, ln.ewma / n_ready, hold, anchor
                )
            else:
                dec = batcher.decide(ln.queue, t, ln.batch, l_of, ln.rate(now), hold)
            if dec is None:
                return
            if dec.dispatch_at > t:
                ln.timer = max(now + 1, math.ceil(dec.dispatch_at * US))
                self._log(f"wait@{s}", ln.timer, [])
                ln.timer_seq = self.seq
                heapq.heappush(self.heap, (ln.timer, self.seq, _TIMER, (s, li, self.seq)))
                self.seq += 1
                return
            batch = ln.queue.pop_batch(dec.size)
            self._log(f"dispatch@{s}/r{rep.rid}", now, batch)
            k = self.batches
            self.batches += 1
            eps = float(self.eps[self.vindex[s][li], k % NOISE_LEN])
            dur = service_us(ln.lat.l_ms(len(batch), cores), eps)
            rep.busy, rep.busy_until, rep.batch = True, now + dur, batch
            rep.pred_until = now + max(1, round(lat.l_s(len(batch), cores) * US))
            self.counters[s].busy_core_us += dur * cores
            heapq.heappush(self.heap, (now + dur, self.seq, _DONE, rep))
            self.seq += 1

    def _done(self, rep: Replica) -> None:
        now = rep.busy_until
        s, li = rep.stage, rep.lane
        ln = self.stages[s][li]
        batch, rep.batch, rep.busy = rep.batch, [], False
        ln.last_free = now
        self.counters[s].completions += len(batch)
        last = s == len(self.stages) - 1
        for req in batch:
            if self.product:
                req.payload = float(req.payload) * ln.accuracy
            else:
                req.payload = float(req.payload) + ln.accuracy
            if last:
                self._record(req, now, LATE if now > req.meta["d"] else OK, li)
            else:
                self._arrive(req, s + 1, now)
        if rep.alive:
            self._try_dispatch(s, li, now)

    def finish(self) -> None:
        """End of run: record what is still queued (expired or unfinished) or in flight."""
        now = self.now
        for st in self.stages:
            for li, ln in enumerate(st):
                for r in ln.queue.drain():
                    self._record(r, now, EXPIRED if r.meta["d"] <= now else UNFINISHED, li)
        seen: set[int] = set()
        for _, _, kind, obj in self.heap:
            if kind == _DONE and isinstance(obj, Replica) and obj.busy and id(obj) not in seen:
                seen.add(id(obj))
                for r in obj.batch:
                    self._record(r, now, UNFINISHED, obj.lane)
        self.heap.clear()
        for i in range(self.ptr, len(self.arr)):
            rid = self.next_id
            self.next_id += 1
            a, d = int(self.arr[i]), int(self.dl[i])
            self.out.append((rid, a, d, now, UNFINISHED, 0.0, -1))
        self.ptr = len(self.arr)
