"""The batch watchdog: decide when a replica running a batch is sick. Pure state machine (time
and the worker's progress are passed in), plus one thin probe of /proc.

A batch is *overdue* once it has run past ``max(start + factor x predicted, deadline +
grace)`` (`deadline`: the earliest deadline in the batch): its replica is sick. A batch is
*stalled* when its worker made no progress for ``stall_s`` past ``start + predicted``: it is
stopped (state ``T``, e.g. SIGSTOP), or it neither ran (its utime + stime did not move) nor
waited to run (the run-queue wait of its threads, /proc schedstat, did not grow by
`WAIT_SHARE` of the time): asleep, e.g. deadlocked. Sick too. With the driver probing every
`PROBE_S`, a SIGSTOPped worker is found within ``predicted + stall_s + PROBE_S`` of the stop
(defaults: predicted + 0.75 s + 0.1 s, inside the issue's 1 s + predicted).

*Starvation is not sickness.* A worker that is runnable but not given the CPU (its run-queue
wait grew by `WAIT_SHARE` of the last probe interval) while it received under
`STARVED_SHARE` of its CPU allocation (`cores`, when the driver knows it) since the batch was
first probed, or while the node itself is saturated (the driver's reading of /proc/stat:
idle under `STARVED_IDLE` of its CPUs over the last `NODE_WINDOW_S`), is slow because of its
neighbours, and killing it only adds a cold start to
the node's load. Such a batch is *spared* past its overdue time for up to
``starved_grace_s``; it is judged again as soon as the node has idle CPU or the worker stops
waiting, and it is sick at ``overdue + starved_grace_s`` whatever the node does (a worker
spinning forever on a saturated node is still found). The stall rule needs no such care: a
starved worker is waiting to run, which counts as progress. Without a run-queue reading
(a probe that returns only state and ticks, or no probe: a worker on another machine) no
batch is spared.

An *idle* replica (ready, no batch watched on it) has no batch to be late: its worker is
probed too (`check_idle`), and one found stopped (state ``T``/``t``) on every probe for
``stall_s`` is sick, so a SIGSTOPped idle worker is killed within ``stall_s + 2 x PROBE_S``
of the stop (its replacement starting then) instead of being found only once a request is
sent to it. An idle worker is
asleep on its socket and uses no CPU, so only the stopped state counts there (no "no CPU
progress" rule); a replica holding a batch is judged by the batch rules only, so a long batch
that makes progress is never killed by the idle probe. What the state probe cannot see: an
idle worker hung while runnable or sleeping (e.g. a deadlocked reader thread); that one is
found by the batch rules the first time it holds a batch.

The driver's contract (`tidal.dataplane.group`): `watch` each dispatched batch, `forget` it when
it ends, call `check(now, probe)` every `PROBE_S` while batches are in flight and
`check_idle(now, idle, probe)` while idle replicas have a process to probe; for each verdict
mark the replica sick in the scheduler, SIGKILL its worker, and let the death path retry the
batch on another replica (deadline permitting) or answer 504 with the reason (an idle
verdict, `batch_id == IDLE`, has nothing to retry: the replica is replaced).
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

PROBE_S = 0.1
WAIT_SHARE = 0.1
"""A worker whose threads' run-queue wait grew by this share of the interval was runnable."""
STARVED_IDLE = 0.05
"""The node is saturated when under this share of its CPUs was idle over `NODE_WINDOW_S`."""
NODE_WINDOW_S = 0.5
LAG_SLACK_S = 0.02
"""A driver check later than this past its due time counts as the gateway's own lag."""
STARVED_SHARE = 0.5
"""A worker that received under this share of its cores since its batch began was starved."""
TICKS_PER_S = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
IDLE = -1
"""`Sick.batch_id` of a verdict on an idle replica (no batch)."""
Probe = Callable[[int], "tuple[str, int] | tuple[str, int, int] | None"]
"""pid -> (process state letter, cumulative CPU ticks[, cumulative run-queue wait in ns of all
its threads]) or None when the process is gone."""


@dataclass(frozen=True, slots=True)
class WatchdogConfig:
    """`factor` x predicted, `grace_s` past the deadline, `stall_s` without CPU progress,
    `starved_grace_s` spared past overdue while the node starves the worker."""

    factor: float = 3.0
    grace_s: float = 0.5
    stall_s: float = 0.75
    starved_grace_s: float = 10.0


@dataclass(slots=True)
class _Watch:
    pid: int
    replica: int
    start: float
    predicted_end: float
    deadline: float
    ticks: int = -1
    progress_t: float = 0.0
    waited: int = -1  # run-queue ns at the last probe (-1: none yet)
    probe_t: float = 0.0
    waiting: bool = False  # runnable and waiting over the last probe interval
    spared: bool = False
    cores: float = 0.0  # its CPU allocation (0: unknown)
    ticks0: int = -1  # CPU ticks and time at the first probe
    t0: float = 0.0
    share: float = -1.0  # CPU received since t0 over `cores` (-1: not known)
    lag: float = 0.0  # the driver's lateness summed over the checks since it began


@dataclass(frozen=True, slots=True)
class Sick:
    """Batch `batch_id` on replica `replica` (worker `pid`) is sick, for `reason`."""

    batch_id: int
    replica: int
    pid: int
    reason: str


def overdue_at(start: float, predicted_end: float, deadline: float, cfg: WatchdogConfig) -> float:
    """When a batch started at `start` becomes overdue (clock seconds)."""
    predicted = max(0.0, predicted_end - start)
    return max(start + cfg.factor * predicted, deadline + cfg.grace_s)


class Watchdog:
    """Per-lane watch over the batches in flight (see the module docstring)."""

    def __init__(self, cfg: WatchdogConfig | None = None) -> None:
        self.cfg = cfg or WatchdogConfig()
        self._w: dict[int, _Watch] = {}
        self._stopped: dict[int, float] = {}  # idle replica -> first probe that saw it stopped

    def __len__(self) -> int:
        return len(self._w)

    def watch(
        self,
        batch_id: int,
        replica: int,
        pid: int | None,
        start: float,
        predicted_end: float,
        deadline: float,
        cores: float = 0.0,
    ) -> None:
        """Start watching a dispatched batch (`pid` None: no process to probe; `cores`: the
        worker's CPU allocation, 0 when unknown)."""
        self._w[batch_id] = _Watch(
            pid or 0, replica, start, predicted_end, deadline, -1, start, cores=cores
        )

    def forget(self, batch_id: int) -> None:
        self._w.pop(batch_id, None)

    def check(
        self,
        now: float,
        probe: Probe | None = None,
        node_starved: bool = False,
        lag_s: float = 0.0,
    ) -> list[Sick]:
        """The batches found sick at `now` (each reported once, then forgotten).
        `node_starved`: the node had (almost) no idle CPU lately (see the module docstring).
        `lag_s`: how late the driver's own check ran (its event loop was not scheduled):
        time the gateway could not run is not the worker's, so every batch in flight gets it
        as an allowance on both rules."""
        out: list[Sick] = []
        cfg = self.cfg
        for bid, w in list(self._w.items()):
            reason = ""
            w.lag += max(0.0, lag_s)
            ran = now - w.start
            pred = max(0.0, w.predicted_end - w.start)
            state = self._observe(w, now, probe)
            overdue = overdue_at(w.start, w.predicted_end, w.deadline, cfg) + w.lag
            if now >= overdue:
                starved = node_starved or 0 <= w.share < STARVED_SHARE
                if starved and w.waiting and now < overdue + cfg.starved_grace_s:
                    w.spared = True  # slow because of the neighbours: not sick (yet)
                    continue
                reason = (
                    f"batch ran {ran:.3f} s, past max({cfg.factor:g} x predicted {pred:.3f} s, "
                    f"deadline + {cfg.grace_s:g} s)"
                    + (f" + the gateway's own lag {w.lag:.3f} s" if w.lag > 0 else "")
                )
                if state is not None:
                    got = f"{w.share:.0%} of its {w.cores:g} cores" if w.share >= 0 else "?"
                    reason += (
                        f"; {'spared while starved of CPU, now ' if w.spared else ''}it "
                        f"received {got}, {'waiting' if w.waiting else 'not waiting'} to run, "
                        f"node {'saturated' if node_starved else 'not saturated'}"
                    )
            elif (
                state is not None
                and now - max(w.predicted_end + w.lag, w.progress_t) >= cfg.stall_s
            ):
                what = (
                    "stopped (state T)"
                    if state in ("T", "t")
                    else "asleep: no CPU progress and no run-queue wait"
                )
                reason = (
                    f"worker {w.pid} {what} for {now - w.progress_t:.3f} s; batch ran "
                    f"{ran:.3f} s against a predicted {pred:.3f} s"
                )
            if reason:
                out.append(Sick(bid, w.replica, w.pid, reason))
                del self._w[bid]
        return out

    @staticmethod
    def _observe(w: _Watch, now: float, probe: Probe | None) -> str | None:
        """Probe `w`'s worker: update its progress time and whether it waited to run; its
        state letter, or None without a probe or once the process is gone."""
        if probe is None or not w.pid:
            return None
        got = probe(w.pid)
        if got is None:
            return None
        state, ticks = got[0], got[1]
        stopped = state in ("T", "t")
        waited = got[2] if len(got) > 2 else -1
        dt_ns = (now - w.probe_t) * 1e9
        w.waiting = (
            not stopped and waited >= 0 <= w.waited and waited - w.waited >= WAIT_SHARE * dt_ns
        )
        if not stopped and (ticks != w.ticks or w.waiting):
            w.progress_t = now
        if w.ticks0 < 0:
            w.ticks0, w.t0 = ticks, now
        elif w.cores > 0 and now - w.t0 >= NODE_WINDOW_S:
            w.share = (ticks - w.ticks0) / TICKS_PER_S / (now - w.t0) / w.cores
        w.ticks, w.waited, w.probe_t = ticks, waited, now
        return state

    def check_idle(self, now: float, idle: Mapping[int, int], probe: Probe) -> list[Sick]:
        """Idle replicas (`idle`: replica id -> worker pid) whose worker every probe found
        stopped for `stall_s` by `now` (each reported once). A replica with a watched batch,
        no pid, or a gone process (the death path's case) is skipped and its history reset."""
        busy = {w.replica for w in self._w.values()}
        for rep in [r for r in self._stopped if r not in idle or r in busy]:
            del self._stopped[rep]
        out: list[Sick] = []
        for rep, pid in idle.items():
            if rep in busy or not pid:
                continue
            got = probe(pid)
            if got is None or got[0] not in ("T", "t"):
                self._stopped.pop(rep, None)
                continue
            since = self._stopped.setdefault(rep, now)
            if now - since >= self.cfg.stall_s:
                del self._stopped[rep]
                out.append(
                    Sick(
                        IDLE,
                        rep,
                        pid,
                        f"idle worker {pid} stopped (state {got[0]}) for {now - since:.3f} s "
                        f"(liveness probe every {PROBE_S:g} s)",
                    )
                )
        return out

    def next_check(self, now: float) -> float:
        """When the next check is due (inf with nothing in flight)."""
        if not self._w:
            return math.inf
        return now + PROBE_S


IdleReplicas = Callable[[], Iterable[tuple[int, Any]]]
"""The lane's idle ready replicas now: (replica id, executor) pairs."""


class LaneWatchdog:
    """The driver side for one lane: a `Watchdog`, its one timer on the injected clock, and
    the executors to probe. `on_sick(Sick)` is called for each verdict (the driver marks the
    replica sick and kills its worker). Executors are probed through their own
    `progress()` (WorkerHandle: its child's /proc entry), never by a bare pid: an in-process
    fake has no process, and a pid alone could name someone else's process. `idle()` lists
    the idle ready replicas for the idle probe; the timer runs while a batch is watched or an
    idle replica has a `progress()` to probe (call `arm` when a replica becomes ready)."""

    def __init__(
        self,
        cfg: WatchdogConfig,
        clock: Any,
        timers: Any,
        on_sick: Callable[[Sick], None],
        idle: IdleReplicas | None = None,
    ) -> None:
        self.dog = Watchdog(cfg)
        self.clock = clock
        self.timers = timers
        self.on_sick = on_sick
        self.idle = idle
        self._execs: dict[int, Any] = {}
        self._timer: Any = None
        self._due = 0.0  # when the running timer was due
        self._closed = False
        self.node = NodeCpu()

    def on_dispatch(
        self, batch_id: int, replica: int, executor: Any, start: float, end: float, due: float
    ) -> None:
        pid = int(getattr(executor, "pid", 0) or 0)
        cores = getattr(executor, "cores", 0.0)
        self._execs[batch_id] = executor
        self.dog.watch(
            batch_id,
            replica,
            pid,
            start,
            end,
            due,
            float(cores or 0.0) if isinstance(cores, (int, float)) else 0.0,
        )
        if self._timer is None:
            self._due = start + PROBE_S
            self._timer = self.timers.call_at(self._due, self._tick)

    def arm(self) -> None:
        """Start the timer if it is not running (a replica became ready: probe it idle)."""
        if self._timer is None and self._idle_probes():
            self._due = self.clock.now() + PROBE_S
            self._timer = self.timers.call_at(self._due, self._tick)

    def _idle_probes(self) -> dict[int, Any]:
        """replica id -> executor, for the idle replicas whose executor can be probed."""
        if self.idle is None:
            return {}
        return {
            rid: ex
            for rid, ex in self.idle()
            if int(getattr(ex, "pid", 0) or 0) and callable(getattr(ex, "progress", None))
        }

    def on_end(self, batch_id: int) -> None:
        self.dog.forget(batch_id)
        self._execs.pop(batch_id, None)

    def _probe_for(self, pid: int) -> tuple[str, int] | tuple[str, int, int] | None:
        for ex in self._execs.values():
            if int(getattr(ex, "pid", 0) or 0) == pid:
                fn = getattr(ex, "progress", None)
                return fn() if callable(fn) else None  # no process: overdue rule only
        return None

    def _tick(self) -> None:
        self._timer = None
        now = self.clock.now()
        self.node.sample(now)
        lag = max(0.0, now - self._due - LAG_SLACK_S)
        for sick in self.dog.check(now, self._probe_for, self.node.starved(), lag):
            self._confirm(sick, hops=2)
        idle = self._idle_probes()
        if idle:
            pids = {rid: int(ex.pid) for rid, ex in idle.items()}
            by_pid = {int(ex.pid): ex for ex in idle.values()}
            for sick in self.dog.check_idle(now, pids, lambda pid: by_pid[pid].progress()):
                self.on_sick(sick)
        if len(self.dog) or self._idle_probes():
            self._due = now + PROBE_S
            self._timer = self.timers.call_at(self._due, self._tick)

    def _confirm(self, sick: Sick, hops: int) -> None:
        """Act on a batch verdict only if the batch is still running `hops` timer turns
        later: a reply that reached the gateway's socket in the same loop turn as this tick
        (a gateway lagging on a saturated node) ends the batch first, one or two turns on;
        the worker was not sick (measured on Ray: killed with 0% CPU since its batch)."""
        if sick.batch_id not in self._execs or self._closed:
            return  # it ended meanwhile
        if hops > 0:
            now = self.clock.now()
            self.timers.call_at(now, lambda: self._confirm(sick, hops - 1))
            return
        ex = self._execs.pop(sick.batch_id, None)
        if ex is not None and sick.pid and callable(getattr(ex, "progress", None)):
            where = proc_wchan(sick.pid)  # a worker on this machine: where it sleeps
            if where:
                sick = replace(sick, reason=f"{sick.reason}; its threads sleep in {where}")
        self.on_sick(sick)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def proc_progress(pid: int) -> tuple[str, int, int] | None:
    """(state letter, utime + stime ticks, run-queue wait in ns summed over its threads) of
    `pid` from /proc, None when it is gone. The wait is -1 where schedstat is not readable
    (a kernel without it): then no batch is spared for starvation."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: the fields start after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        state, ticks = fields[0].decode(), int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return None
    return state, ticks, run_queue_wait_ns(pid)


def run_queue_wait_ns(pid: int) -> int:
    """Nanoseconds `pid`'s threads have spent runnable but not running (waiting on a run
    queue, or throttled by a CPU quota): the second field of each /proc/PID/task/TID/schedstat,
    summed. -1 when it cannot be read."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return -1
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that just exited
    return total


def proc_wchan(pid: int) -> str:
    """Where `pid`'s threads sleep in the kernel (/proc/PID/task/TID/wchan), as "main:
    WCHAN, N x WCHAN, ..." ("" when unreadable): says whether a worker past its batch's time
    waits for the batch (a socket read), on a lock (futex) or elsewhere."""
    try:
        tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except (OSError, ValueError):
        return ""
    seen: dict[str, int] = {}
    main = ""
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                w = f.read().strip() or "0"
        except OSError:
            continue
        if tid == str(pid):
            main = w
        else:
            seen[w] = seen.get(w, 0) + 1
    rest = ", ".join(f"{n} x {w}" for w, n in sorted(seen.items(), key=lambda kv: -kv[1]))
    return f"main: {main}" + (f"; others: {rest}" if rest else "") if main or rest else ""


class NodeCpu:
    """Whether this machine's CPUs were saturated lately: the idle share of /proc/stat's
    ``cpu`` line over the last `window_s` (a thin probe; `sample(now)` once per watchdog
    tick, `starved()` after it). Unreadable /proc/stat: never starved."""

    def __init__(self, window_s: float = NODE_WINDOW_S, path: str = "/proc/stat") -> None:
        self.window_s = window_s
        self.path = path
        self._samples: deque[tuple[float, int, int]] = deque()

    def sample(self, now: float) -> None:
        try:
            with open(self.path, "rb") as f:
                cols = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return
        if len(cols) < 5:
            return
        idle = cols[3] + cols[4]  # idle + iowait
        total = sum(cols[:8])  # user nice system idle iowait irq softirq steal (not guest)
        self._samples.append((now, idle, total))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def idle_share(self) -> float | None:
        """Idle share of all CPUs over the window, None until two samples span some time."""
        if len(self._samples) < 2:
            return None
        (_, i0, t0), (_, i1, t1) = self._samples[0], self._samples[-1]
        return (i1 - i0) / (t1 - t0) if t1 > t0 else None

    def starved(self) -> bool:
        share = self.idle_share()
        return share is not None and share < STARVED_IDLE


__all__ = [
    "IDLE",
    "PROBE_S",
    "IdleReplicas",
    "LaneWatchdog",
    "NodeCpu",
    "Sick",
    "Watchdog",
    "WatchdogConfig",
    "overdue_at",
    "proc_progress",
    "proc_wchan",
    "run_queue_wait_ns",
]
