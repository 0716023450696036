"""The batch watchdog: decide when a replica running a batch is sick. Pure state machine (time
and the worker's progress are passed in), plus one thin probe of /proc.

A batch is *overdue* once it has run past ``max(start + factor x predicted, deadline +
grace)`` (`deadline`: the earliest deadline in the batch): its replica is sick. A batch is
*stalled* when its worker made no CPU progress (its utime + stime did not move, or it is
stopped: state ``T``, e.g. SIGSTOP) for ``stall_s`` past ``start + predicted``: sick too. With
the driver probing every `PROBE_S`, a SIGSTOPped worker is found within ``predicted + stall_s
+ PROBE_S`` of the stop (defaults: predicted + 0.75 s + 0.1 s, inside the issue's 1 s +
predicted).

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

PROBE_S = 0.1
IDLE = -1
"""`Sick.batch_id` of a verdict on an idle replica (no batch)."""
Probe = Callable[[int], "tuple[str, int] | None"]
"""pid -> (process state letter, cumulative CPU ticks) or None when the process is gone."""


@dataclass(frozen=True, slots=True)
class WatchdogConfig:
    """`factor` x predicted, `grace_s` past the deadline, `stall_s` without CPU progress."""

    factor: float = 3.0
    grace_s: float = 0.5
    stall_s: float = 0.75


@dataclass(slots=True)
class _Watch:
    pid: int
    replica: int
    start: float
    predicted_end: float
    deadline: float
    ticks: int = -1
    progress_t: float = 0.0


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
    ) -> None:
        """Start watching a dispatched batch (`pid` None: no process to probe)."""
        self._w[batch_id] = _Watch(pid or 0, replica, start, predicted_end, deadline, -1, start)

    def forget(self, batch_id: int) -> None:
        self._w.pop(batch_id, None)

    def check(self, now: float, probe: Probe | None = None) -> list[Sick]:
        """The batches found sick at `now` (each reported once, then forgotten)."""
        out: list[Sick] = []
        cfg = self.cfg
        for bid, w in list(self._w.items()):
            reason = ""
            ran = now - w.start
            pred = max(0.0, w.predicted_end - w.start)
            if now >= overdue_at(w.start, w.predicted_end, w.deadline, cfg):
                reason = (
                    f"batch ran {ran:.3f} s, past max({cfg.factor:g} x predicted {pred:.3f} s, "
                    f"deadline + {cfg.grace_s:g} s)"
                )
            elif probe is not None and w.pid:
                got = probe(w.pid)
                if got is not None:
                    state, ticks = got
                    if ticks != w.ticks and state not in ("T", "t"):
                        w.ticks, w.progress_t = ticks, now
                    idle_from = max(w.predicted_end, w.progress_t)
                    if now - idle_from >= cfg.stall_s:
                        what = "stopped (state T)" if state in ("T", "t") else "no CPU progress"
                        reason = (
                            f"worker {w.pid} {what} for {now - w.progress_t:.3f} s; batch ran "
                            f"{ran:.3f} s against a predicted {pred:.3f} s"
                        )
            if reason:
                out.append(Sick(bid, w.replica, w.pid, reason))
                del self._w[bid]
        return out

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

    def on_dispatch(
        self, batch_id: int, replica: int, executor: Any, start: float, end: float, due: float
    ) -> None:
        pid = int(getattr(executor, "pid", 0) or 0)
        self._execs[batch_id] = executor
        self.dog.watch(batch_id, replica, pid, start, end, due)
        if self._timer is None:
            self._timer = self.timers.call_at(start + PROBE_S, self._tick)

    def arm(self) -> None:
        """Start the timer if it is not running (a replica became ready: probe it idle)."""
        if self._timer is None and self._idle_probes():
            self._timer = self.timers.call_at(self.clock.now() + PROBE_S, self._tick)

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

    def _probe_for(self, pid: int) -> tuple[str, int] | None:
        for ex in self._execs.values():
            if int(getattr(ex, "pid", 0) or 0) == pid:
                fn = getattr(ex, "progress", None)
                return fn() if callable(fn) else None  # no process: overdue rule only
        return None

    def _tick(self) -> None:
        self._timer = None
        now = self.clock.now()
        for sick in self.dog.check(now, self._probe_for):
            self._execs.pop(sick.batch_id, None)
            self.on_sick(sick)
        idle = self._idle_probes()
        if idle:
            pids = {rid: int(ex.pid) for rid, ex in idle.items()}
            by_pid = {int(ex.pid): ex for ex in idle.values()}
            for sick in self.dog.check_idle(now, pids, lambda pid: by_pid[pid].progress()):
                self.on_sick(sick)
        if len(self.dog) or self._idle_probes():
            self._timer = self.timers.call_at(now + PROBE_S, self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def proc_progress(pid: int) -> tuple[str, int] | None:
    """(state letter, utime + stime ticks) of `pid` from /proc, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: the fields start after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode(), int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return None


__all__ = [
    "IDLE",
    "PROBE_S",
    "IdleReplicas",
    "LaneWatchdog",
    "Sick",
    "Watchdog",
    "WatchdogConfig",
    "overdue_at",
    "proc_progress",
]
