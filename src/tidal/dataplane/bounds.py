"""Bounded work per lane: queue caps, and admission priced in rows. Pure functions (no clock,
no asyncio), called by `tidal.dataplane.scheduler.GroupScheduler.push` (the one admission path
of the live gateway and the simulator).

Queue caps (:func:`over_cap`): a (stage, variant) lane holds at most `caps.rows` queued rows and
`caps.bytes` queued payload bytes (``ServeConfig.limits``: defaults from the memory budget).
A request that would pass a cap is refused at once: 503, cause ``refused``, a reason naming
the cap, and a retry-after of the time the lane needs to drain what is queued (like Triton's
``max_queue_size`` and Ray Serve's ``max_queued_requests``, which answer 503 at once too).

Admission in rows (:func:`predict_finish_rows`): a request of `rows` rows waits for the
`rows_ahead` rows queued before it (EDF order), served by the lane's ready replicas in batches
of the size in force: ``b = max(rows, min(max_batch x mean rows per queued request, rows_ahead
+ rows))`` rows, each taking ``margin x l(b, c)`` on a replica of c cores. The full batches ahead
(``rows_ahead // b``) go, in order, to the replica free first (exactly, through a heap, for up
to `EXACT_BATCHES`; beyond that, as a fluid at each replica's rate ``b / l(b, c)``, which is
exact for equal replicas up to one batch); the request's own batch (the rest ahead plus its
rows, filled up to ``b`` by later arrivals, as under load) then runs on the replica free
first. A 1024-row request is priced as 1024 rows, not as one request. When batches keep
their head's deadline (``head_deadline``), a request whose joining would make the head's
batch end after it is priced in the batch after that one (`behind`). The live scheduler
passes its calibration (`tidal.dataplane.calibration`): the wait until the batch starts is
stretched by the feedback margin, the batch's own service by the tail factor.

A lane whose only replicas are starting (a replacement after a death) admits a request when
``ready_at + service`` still meets its deadline: ``ready_at`` is passed in as a replica that
becomes free at that time, so requests whose deadline allows waiting wait.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tidal.dataplane.request import Admitted, QueuedRequest, Refused

LatencyBC = Callable[[int, float], float]
EXACT_BATCHES = 64


@dataclass(frozen=True, slots=True)
class LaneCaps:
    """The caps of one lane: queued rows and queued payload bytes."""

    rows: int
    bytes: int


@dataclass(frozen=True, slots=True)
class CapVerdict:
    """Why a request is refused by a cap, and when to retry (seconds, >= min_retry_s)."""

    reason: str
    retry_after_s: float


def over_cap(
    caps: LaneCaps,
    queued_rows: int,
    queued_bytes: int,
    rows: int,
    nbytes: int,
    drain_s: float,
    min_retry_s: float = 0.05,
) -> CapVerdict | None:
    """None when `rows`/`nbytes` fit under the caps on top of what is queued; else the
    refusal. `drain_s`: predicted time to serve what is queued (the retry-after)."""
    retry = max(min_retry_s, drain_s)
    if queued_rows + rows > caps.rows:
        return CapVerdict(
            f"queue full: {queued_rows} rows queued + {rows} would exceed the lane's cap of "
            f"{caps.rows} rows (limits.queue_rows)",
            retry,
        )
    if queued_bytes + nbytes > caps.bytes:
        return CapVerdict(
            f"queue full: {queued_bytes} bytes queued + {nbytes} would exceed the lane's cap of "
            f"{caps.bytes} bytes (limits.queue_bytes / memory_budget_mb)",
            retry,
        )
    return None


def batch_rows(rows: int, rows_ahead: int, mean_rows: float, max_batch: int) -> int:
    """Rows of the batches the lane forms now (the batch size in force, in rows)."""
    typical = max(1, int(math.ceil(max_batch * max(1.0, mean_rows))))
    return max(rows, min(typical, rows_ahead + rows))


def predict_finish_rows(
    rows: int,
    rows_ahead: int,
    free_at: Sequence[float],
    cores: Sequence[float],
    latency_s: LatencyBC,
    batch: int,
    now: float,
    margin: float = 1.0,
    behind: bool = False,
) -> tuple[float, float]:
    """(predicted finish of the request, start of its batch), clock seconds; see the module
    docstring. `free_at[i]`: when replica i is free (<= now: idle); `batch`: batch rows
    (:func:`batch_rows`). `free_at` must not be empty. `behind`: the rest of the rows ahead
    leave as their own batch and the request rides the next one (a batch that keeps its
    head's deadline, `SchedulerConfig.batch_deadline`, leaves it behind)."""
    if not free_at:
        raise ValueError("no replica: predict_finish_rows needs at least one")
    b = max(1, batch)
    k, rest = divmod(max(0, rows_ahead), b)
    free = [(max(now, t), i) for i, t in enumerate(free_at)]
    dur = [margin * latency_s(b, c) for c in cores]
    if k > EXACT_BATCHES:
        free = _fluid(free, dur, k - EXACT_BATCHES)
        k = EXACT_BATCHES
    heapq.heapify(free)
    for _ in range(k):
        t, i = heapq.heappop(free)
        heapq.heappush(free, (t + dur[i], i))
    if behind and rest:
        t, i = heapq.heappop(free)
        heapq.heappush(free, (t + margin * latency_s(rest, cores[i]), i))
        rest = 0
    start, i = free[0]
    # Its own batch: the rest ahead plus its rows, filled up to the batch size in force by
    # requests that arrive after it (under load every batch leaves full).
    return start + margin * latency_s(max(rest + rows, b), cores[i]), start


def _fluid(free: list[tuple[float, int]], dur: list[float], k: int) -> list[tuple[float, int]]:
    """Advance the replicas' free times by `k` batches served as a fluid: each replica i
    serves 1/dur[i] batches per second from its free time on; returns the new free times."""
    order = sorted(free)
    level = order[0][0]
    rate = 0.0
    done = 0.0
    j = 0
    n = len(order)
    while True:
        nxt = order[j][0] if j < n else math.inf
        if rate > 0 and done + rate * (nxt - level) >= k:
            level += (k - done) / rate
            break
        done += rate * (nxt - level)
        level = nxt
        rate += 1.0 / dur[order[j][1]]
        j += 1
    return [(max(t, level), i) for t, i in free]


class _Replica(Protocol):
    state: str
    cores: float
    inflight: int
    busy_until: float


def rows_ahead(queue: Any, req: QueuedRequest, queued_rows: int) -> int:
    """Rows queued before `req` in EDF order (deadline <= its own): all of them in the common
    case of a request with the latest deadline, none for one with the earliest, else a pass
    over the queue."""
    n = len(queue)
    if n == 0:
        return 0
    ahead = queue.count_before(req.deadline)
    if ahead == n:
        return queued_rows
    if ahead == 0:
        return 0
    return sum(q.rows for q in queue.requests() if q.deadline <= req.deadline)


def admit_rows(
    req: QueuedRequest,
    now: float,
    *,
    queue: Any,
    queued_rows: int,
    replicas: Iterable[_Replica],
    latency_s: LatencyBC,
    max_batch: int,
    margin: float = 1.0,
    deadline: float | None = None,
    min_retry_s: float = 0.05,
    stretch: float = 1.0,
    head_deadline: float | None = None,
    tail: float = 1.0,
) -> Admitted | Refused:
    """Admission in rows for one lane (see the module docstring): Admitted(predicted finish)
    or Refused(503, "refused", reason, retry_after_s). Ready replicas serve from their
    predicted busy-until; when none is ready, replicas still starting count from their
    `expected_ready` time (a replacement), so a request whose deadline allows waiting waits.

    `stretch` and `tail` (`tidal.dataplane.calibration`): admitted only when
    ``now + stretch x wait + tail x service`` meets the deadline, where wait is the time
    until its batch starts (the feedback margin on the queue ahead) and service its batch's
    time (`tail`: the tail speed over the typical one); the prediction returned is the
    plain one. `head_deadline`: the stage deadline of the queue's head, when batches
    keep their head's deadline: a request that would ride in the head's batch and make it
    end after that deadline is priced in the batch after it."""
    due = req.deadline if deadline is None else deadline
    free: list[float] = []
    cores: list[float] = []
    starting: list[_Replica] = []
    for r in replicas:
        if r.state == "ready":
            free.append(max(now, r.busy_until) if r.inflight else now)
            cores.append(r.cores)
        elif r.state == "starting":
            starting.append(r)
    waiting = not free
    if waiting:
        for r in starting:
            t = float(getattr(r, "expected_ready", math.inf))
            if math.isfinite(t):
                free.append(max(now, t))
                cores.append(r.cores)
    if not free:
        return Refused(503, "refused", "no replica ready for this lane", 1.0)
    n = len(queue)
    mean = queued_rows / n if n else float(req.rows)
    ahead = rows_ahead(queue, req, queued_rows)
    b = batch_rows(req.rows, ahead, mean, max_batch)
    finish, start = predict_finish_rows(req.rows, ahead, free, cores, latency_s, b, now, margin)
    if head_deadline is not None and 0 < ahead < b and finish > head_deadline:
        finish, start = predict_finish_rows(
            req.rows, ahead, free, cores, latency_s, b, now, margin, behind=True
        )
    if now + stretch * (start - now) + tail * (finish - start) <= due:
        return Admitted(finish)
    budget = due - now
    alone = min(margin * latency_s(req.rows, c) for c in cores)
    if alone > budget and not waiting:
        return Refused(
            503,
            "refused",
            f"remaining budget {budget * 1e3:.1f} ms is below the service time "
            f"{alone * 1e3:.1f} ms of its {req.rows} rows",
            min_retry_s,
        )
    what = "waiting for a replica to start, " if waiting else ""
    return Refused(
        503,
        "refused",
        f"predicted finish {(finish - now) * 1e3:.1f} ms (wait x{stretch:.2f}, service "
        f"x{tail:.2f}: observed tails) exceeds the budget {budget * 1e3:.1f} ms "
        f"({what}{ahead} rows ahead, {len(free)} replicas, {req.rows} rows)",
        max(start - now, min_retry_s),
    )


def row_bytes(variant: str) -> int:
    """Payload bytes of one input row of `variant` (all inputs), 256 when unknown."""
    # function-local: the catalog pulls the model zoo; bounds is imported by the simulator.
    from tidal.models.catalog import get_variant

    try:
        inp = get_variant(variant).input
        return max(1, math.prod(int(d) for d in inp.shape) * int(inp.np_dtype.itemsize))
    except Exception:  # not in the catalog (yet): a row of 64 floats
        return 256


def harden_stage(stage: Any, limits: Any, lanes: int) -> None:
    """Give `stage` (a live Stage) the lane caps and watchdog settings of `limits`
    (ServeConfig.limits) for a gateway of `lanes` lanes; its groups pick them up when made."""
    from tidal.dataplane.watchdog import WatchdogConfig

    stage.caps_for = lambda variant: LaneCaps(
        limits.lane_rows(lanes, row_bytes(variant)), limits.lane_bytes(lanes)
    )
    stage.watchdog = WatchdogConfig(
        factor=limits.watchdog_factor,
        grace_s=limits.watchdog_grace_ms / 1e3,
        stall_s=limits.stall_ms / 1e3,
    )
    for name, g in getattr(stage, "groups", {}).items():
        g.sched.caps = stage.caps_for(name)


def drain_time(
    queued_rows: int,
    free_at: Sequence[float],
    cores: Sequence[float],
    latency_s: LatencyBC,
    batch: int,
    now: float,
) -> float:
    """Seconds until `queued_rows` rows are served (the retry-after of a full queue)."""
    if not free_at:
        return 1.0
    if queued_rows <= 0:
        return max(0.0, min(free_at) - now)
    _, start = predict_finish_rows(0, queued_rows, free_at, cores, latency_s, batch, now)
    return max(0.0, start - now)


__all__ = [
    "EXACT_BATCHES",
    "admit_rows",
    "harden_stage",
    "row_bytes",
    "rows_ahead",
    "CapVerdict",
    "LaneCaps",
    "batch_rows",
    "drain_time",
    "over_cap",
    "predict_finish_rows",
]
