"""Admission control: accept a request only if its deadline can be met.

Pure function (no clock reads, no asyncio), called by `tidal.dataplane.scheduler.GroupScheduler`
(the one admission path of the live gateway and the simulator).

Model (the contract): the replicas of the request's stage serve the EDF queue in batches of at
most ``max_batch``. The new request is served after the ``k`` queued requests whose deadline is
``<=`` its own (EDF order; equal deadlines keep arrival order), so it rides in batch number
``j = k // max_batch`` (0-based). Batches go, in order, to the replica that is free first
(replica ``i`` is free at ``max(now, busy_until[i])``). Its batch holds
``min(max_batch, queued + 1 - j * max_batch)`` requests (conservative: later requests may fill it).
Predicted finish = start of batch j + ``margin * l(size, cores)``.

- accepted when the predicted finish is ``<= deadline``;
- refused otherwise, with a reason naming the figures and ``retry_after_s``: the time until
  the work ahead of it has drained (when the last of the ``j`` earlier batches starts), at
  least ``min_retry_s``;
- refused with reason ``no_replica`` when the stage has no ready replica (``retry_after_s`` =
  ``cold_start_s``);
- refused with reason ``budget`` when even an idle replica at batch 1 cannot meet the budget
  (retrying with the same budget cannot help; ``retry_after_s`` = ``min_retry_s``).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tidal.core.request import Request

LatencyBC = Callable[[int, float], float]
"""l(b, c): predicted latency in seconds of one batch of b on c cores."""


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict. `cause` is "" when accepted, else one of: late, no_replica, budget."""

    accepted: bool
    predicted_finish: float
    cause: str = ""
    reason: str = ""
    retry_after_s: float = 0.0


def admit(
    request: Request,
    ahead: int,
    queued: int,
    busy_until: Sequence[float],
    cores: float | Sequence[float],
    latency_s: LatencyBC,
    max_batch: int,
    now: float,
    *,
    margin: float = 1.0,
    min_retry_s: float = 0.05,
    cold_start_s: float = 1.0,
    deadline: float | None = None,
) -> Admission:
    """Decide whether `request` can finish by its deadline (see the module docstring).

    `ahead`: queued requests served before it (``EDFQueue.count_before(request.deadline)``);
    `queued`: all queued requests; `busy_until[i]`: clock time replica i finishes its current
    work (``<= now`` when idle); `cores`: cores of every replica, or one value per replica;
    `deadline`: the deadline to meet (default ``request.deadline``; the scheduler passes the
    stage deadline, the request's minus the later stages' time).
    ValueError if `max_batch < 1`, `ahead > queued` or the lengths of busy_until/cores differ.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if not 0 <= ahead <= queued:
        raise ValueError(f"ahead ({ahead}) must be in [0, queued ({queued})]")
    n_rep = len(busy_until)
    per_core = [float(cores)] * n_rep if isinstance(cores, int | float) else list(cores)
    if len(per_core) != n_rep:
        raise ValueError(f"{len(per_core)} cores values for {n_rep} replicas")
    if n_rep == 0:
        return Admission(
            False,
            float("inf"),
            "no_replica",
            "no replica ready for this stage",
            max(cold_start_s, min_retry_s),
        )
    due = request.deadline if deadline is None else deadline
    budget = due - now
    best_alone = min(margin * latency_s(1, c) for c in per_core)
    if best_alone > budget:
        return Admission(
            False,
            now + best_alone,
            "budget",
            f"remaining budget {budget * 1e3:.1f} ms is below the service time "
            f"{best_alone * 1e3:.1f} ms of one request",
            min_retry_s,
        )
    j = ahead // max_batch
    size = min(max_batch, queued + 1 - j * max_batch)
    # Batches 0..j-1 are full; assign them to the replica free first (a heap of free times).
    free = [(max(now, t), i) for i, t in enumerate(busy_until)]
    heapq.heapify(free)
    for _ in range(j):
        t, i = heapq.heappop(free)
        heapq.heappush(free, (t + margin * latency_s(max_batch, per_core[i]), i))
    start, i = free[0]
    finish = start + margin * latency_s(size, per_core[i])
    if finish <= due:
        return Admission(True, finish)
    return Admission(
        False,
        finish,
        "late",
        f"predicted finish {(finish - now) * 1e3:.1f} ms exceeds the budget "
        f"{budget * 1e3:.1f} ms ({ahead} requests ahead, {n_rep} replicas)",
        max(start - now, min_retry_s),
    )
