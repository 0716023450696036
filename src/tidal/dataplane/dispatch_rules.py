"""Which replica a batch goes to, and how the batch the batcher chose is trimmed before it
is dispatched (`GroupScheduler.step`): pure functions of the replicas, the batch, its start
time and the lane's latency model (no clock, no state), shared by the live gateway and the
simulator through the scheduler.

- `free_replica`: an idle ready replica (most cores first, lowest id on ties), else one
  predicted to finish within `prefetch_s` (pipelining, when `pipeline_depth` > 1);
- `split_hopeless` (`SchedulerConfig.expire_hopeless`): the requests that cannot finish by
  their stage deadline even in a batch of their own are expired at dispatch;
- `head_prefix` (`SchedulerConfig.batch_deadline`): a batch keeps its head's deadline, so
  only the longest EDF prefix predicted to end by it leaves; the rest go back to the queue.

Times are clock seconds; `down` is what the stage deadline leaves for later stages and the
answer's way (`downstream_s + reply_s`); `f` multiplies the latency model (the slowdown in
force).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from tidal.dataplane.lane import READY, LaneReplica
from tidal.dataplane.request import QueuedRequest

LatencyBC = Callable[[int, float], float]


def free_replica(
    replicas: Iterable[LaneReplica], now: float, depth: int, prefetch_s: float
) -> LaneReplica | None:
    """The replica the next batch goes to at `now`, or None (see the module docstring)."""
    best: LaneReplica | None = None
    soon: LaneReplica | None = None
    for r in replicas:
        if r.state != READY:
            continue
        if r.inflight == 0:
            if best is None or r.cores > best.cores or (r.cores == best.cores and r.id < best.id):
                best = r
        elif (
            r.inflight < depth
            and r.applied_cores == r.cores
            and r.busy_until - now <= prefetch_s
            and (soon is None or r.busy_until < soon.busy_until)
        ):
            soon = r
    return best or soon


def split_hopeless(
    reqs: Sequence[QueuedRequest],
    start: float,
    cores: float,
    f: float,
    down: float,
    latency_s: LatencyBC,
) -> tuple[list[QueuedRequest], list[QueuedRequest]]:
    """(keep, gone): the requests of `reqs` that can finish by their stage deadline in a
    batch of their own started at `start` (latency x `f`), and the others."""
    keep: list[QueuedRequest] = []
    gone: list[QueuedRequest] = []
    for x in reqs:
        if start + f * latency_s(x.rows, cores) > x.deadline - down:
            gone.append(x)
        else:
            keep.append(x)
    return keep, gone


def head_prefix(
    reqs: Sequence[QueuedRequest],
    start: float,
    cores: float,
    f: float,
    down: float,
    latency_s: LatencyBC,
) -> int:
    """How many requests of `reqs` (EDF order) leave: the longest prefix whose batch,
    started at `start`, is predicted (latencies x `f`) to end by the head's stage deadline;
    all of them when even the head alone cannot make it (it is late whatever the batch)."""
    due = reqs[0].deadline - down
    rows = 0
    keep = 0
    for x in reqs:
        rows += x.rows
        if start + f * latency_s(rows, cores) > due:
            break
        keep += 1
    return len(reqs) if keep == 0 else keep


__all__ = ["free_replica", "head_prefix", "split_hopeless"]
