"""CPU allocation of a worker process, changed in place (the only module touching cgroups).

Mechanisms, chosen once per worker (report: `CpuController.mechanism`):
- "cgroup-v1": a cgroup `<cpu mount>/tidal/p<parent pid>-w<worker pid>` with
  `cpu.cfs_quota_us = cores * cpu.cfs_period_us` (fractional cores), the whole process moved in
  via `cgroup.procs`;
- "cgroup-v2": the same with `cpu.max = "<quota> <period>"` under `<cgroup2 mount>/tidal`;
- "affinity": cgroups cannot be written: only the CPU set (cores rounded up) bounds the worker.
In every mechanism the CPU set (ceil(cores) CPUs) is applied with sched_setaffinity to EVERY
thread of the process (`/proc/<pid>/task`), so ONNX Runtime's pool threads follow. Both the
quota and the affinity take effect immediately, i.e. on the next batch. Weights: each worker
cgroup gets the weight of ceil(cores) tasks (v1 `cpu.shares` 1024 per core, v2 `cpu.weight`
100 per core) and the parent group `tidal` that of the machine's CPUs, so under contention the
workers compete like their threads would at the root (the group would otherwise weigh as one
task for all workers together); the quota still caps each one. Set
`TIDAL_CPU_MECHANISM=affinity` to force the fallback. `cleanup()` removes the cgroup.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

PERIOD_US = 100_000
SHARES_PER_CPU = 1024  # cgroup v1 cpu.shares of one task at the root
GROUPS = ("tidal", "tidal-profile")
_V1_MOUNTS = (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/cpu,cpuacct"))
_V2_MOUNT = Path("/sys/fs/cgroup")


def available_cpus() -> list[int]:
    """CPUs this process may run on (sorted)."""
    return sorted(os.sched_getaffinity(0))


def machine_cores() -> float:
    """How many cores a worker may be given on this machine."""
    return float(len(available_cpus()))


@dataclass(frozen=True)
class CpuState:
    """What is in force now, read back from the kernel."""

    mechanism: str
    quota_cores: float | None  # None: no quota (affinity fallback or unlimited)
    cpus: tuple[int, ...]  # union of the affinity masks of all threads
    threads: int
    threads_agree: bool  # every thread has the same mask
    threads_in_cgroup: bool | None  # None without a cgroup


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_worker(pid: int) -> bool:
    """True if `pid` runs Tidal's worker entry point (never kill anything else)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"tidal.dataplane.worker_main" in f.read()
    except OSError:
        return False


def _sweep_stale(root: Path) -> list[str]:
    """Remove the `p<parent>-w<worker>` cgroups of dead parents (never a live parent's).

    A cgroup still holding processes belongs to a gateway that was SIGKILLed while its worker
    could not notice (e.g. stopped with SIGSTOP): such orphans can never serve again, so a
    process in it that runs Tidal's worker entry point is killed first. Returns the names of
    the cgroups removed."""
    removed: list[str] = []
    with contextlib.suppress(OSError):
        for d in root.iterdir():
            if not d.is_dir() or not d.name.startswith("p") or "-w" not in d.name:
                continue
            try:
                parent = int(d.name[1:].split("-w")[0])
            except ValueError:
                continue
            if _pid_alive(parent):
                continue
            pids: list[int] = []
            with contextlib.suppress(OSError, ValueError):
                pids = [int(x) for x in (d / "cgroup.procs").read_text().split()]
            for pid in pids:
                if _is_worker(pid):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            for _ in range(50 if pids else 1):  # a killed process leaves its cgroup promptly
                try:
                    d.rmdir()
                    removed.append(d.name)
                    break
                except OSError:
                    time.sleep(0.01)
    return removed


def sweep_stale_cgroups() -> list[str]:
    """Remove every stale worker cgroup (dead parent) under Tidal's groups, in every mounted
    hierarchy; called when a gateway starts. Returns the names removed."""
    roots = [m / g for m in (*_V1_MOUNTS, _V2_MOUNT) for g in GROUPS]
    removed: list[str] = []
    for root in roots:
        if root.is_dir():
            removed += _sweep_stale(root)
    return removed


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class CpuController:
    """Controls the CPU allocation of process `pid`. Not thread-safe; one per worker."""

    def __init__(self, pid: int, *, group: str = "tidal", weight: int | None = None) -> None:
        """`group`: the parent cgroup's name; `weight`: CPU weight (v1 cpu.shares, 2..262144)
        given to the group and the worker's cgroup, or (affinity fallback) a nice of -10 when
        set. Only the profiler raises it, to measure through other jobs' noise; the quota
        still caps the worker."""
        self.pid = pid
        self.group = group
        self.weight = weight
        self.cgroup: Path | None = None
        self.mechanism = "affinity"
        self.cpus: tuple[int, ...] = tuple(available_cpus())
        self.cores = machine_cores()
        forced = os.environ.get("TIDAL_CPU_MECHANISM", "")
        if forced != "affinity":
            self._try_cgroup()
        if weight is not None and self.cgroup is None:
            with contextlib.suppress(OSError):
                for tid in os.listdir(f"/proc/{pid}/task"):
                    os.setpriority(os.PRIO_PROCESS, int(tid), -10)

    def _try_cgroup(self) -> None:
        name = f"p{os.getpid()}-w{self.pid}"
        for mount in _V1_MOUNTS:
            if (mount / "cpu.cfs_quota_us").is_file():
                try:
                    root = mount / self.group
                    root.mkdir(exist_ok=True)
                    _sweep_stale(root)
                    cg = root / name
                    cg.mkdir(exist_ok=True)
                    _write(cg / "cpu.cfs_period_us", str(PERIOD_US))
                    if self.weight is not None:
                        _write(root / "cpu.shares", str(self.weight))
                        _write(cg / "cpu.shares", str(self.weight))
                    else:
                        # The group competes at the root as ONE task (1024 shares) unless
                        # told otherwise: weigh it like the machine's CPUs, so under
                        # contention the workers get what their threads would; the quota
                        # still caps each worker (measured: resnet18 batch 157 -> 92 ms at
                        # load 18 with 4096 shares on 2 CPUs; issue 14's finding).
                        with contextlib.suppress(OSError):
                            _write(root / "cpu.shares", str(SHARES_PER_CPU * len(available_cpus())))
                    _write(cg / "cgroup.procs", str(self.pid))
                    self.cgroup, self.mechanism = cg, "cgroup-v1"
                    return
                except OSError:
                    self._rmdir()
        ctrl = _V2_MOUNT / "cgroup.controllers"
        if ctrl.is_file() and "cpu" in ctrl.read_text().split():
            try:
                root = _V2_MOUNT / self.group
                root.mkdir(exist_ok=True)
                _write(_V2_MOUNT / "cgroup.subtree_control", "+cpu")
                _write(root / "cgroup.subtree_control", "+cpu")
                _sweep_stale(root)
                cg = root / name
                cg.mkdir(exist_ok=True)
                if self.weight is not None:
                    w2 = str(max(1, min(10000, self.weight // 26)))  # shares 1024 ~ weight 100
                    _write(root / "cpu.weight", w2)
                    _write(cg / "cpu.weight", w2)
                else:  # as v1: the group weighs like the machine's CPUs
                    with contextlib.suppress(OSError):
                        _write(root / "cpu.weight", str(min(10000, 100 * len(available_cpus()))))
                _write(cg / "cgroup.procs", str(self.pid))
                self.cgroup, self.mechanism = cg, "cgroup-v2"
                return
            except OSError:
                self._rmdir()

    def _rmdir(self, cg: Path | None = None) -> None:
        with contextlib.suppress(OSError):
            (cg or self.cgroup or Path("/nonexistent")).rmdir()

    def apply(self, cores: float, cpus: tuple[int, ...]) -> None:
        """Set quota = `cores` and the CPU set `cpus` on every thread. Raises OSError if the
        process is gone."""
        if self.cgroup is not None:
            quota = max(1000, int(round(cores * PERIOD_US)))
            n = max(1, math.ceil(cores - 1e-9))  # weight like ceil(cores) busy threads
            if self.mechanism == "cgroup-v1":
                _write(self.cgroup / "cpu.cfs_quota_us", str(quota))
                if self.weight is None:
                    _write(self.cgroup / "cpu.shares", str(SHARES_PER_CPU * n))
            else:
                _write(self.cgroup / "cpu.max", f"{quota} {PERIOD_US}")
                if self.weight is None:
                    _write(self.cgroup / "cpu.weight", str(min(10000, 100 * n)))
        self.set_affinity(cpus)
        self.cores, self.cpus = cores, cpus

    def set_affinity(self, cpus: tuple[int, ...]) -> None:
        """sched_setaffinity on every thread of the process (threads may come and go)."""
        tids = os.listdir(f"/proc/{self.pid}/task")
        for tid in tids:
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                os.sched_setaffinity(int(tid), cpus)

    def read_back(self) -> CpuState:
        """The quota and CPU sets actually in force, read from the kernel."""
        quota: float | None = None
        in_cg: bool | None = None
        if self.cgroup is not None:
            if self.mechanism == "cgroup-v1":
                q = int((self.cgroup / "cpu.cfs_quota_us").read_text())
                p = int((self.cgroup / "cpu.cfs_period_us").read_text())
            else:
                qs, ps = (self.cgroup / "cpu.max").read_text().split()
                q, p = (-1 if qs == "max" else int(qs)), int(ps)
            quota = None if q < 0 else q / p
        masks: list[frozenset[int]] = []
        tids: list[str] = []
        with contextlib.suppress(FileNotFoundError):
            tids = os.listdir(f"/proc/{self.pid}/task")
        for tid in tids:
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                masks.append(frozenset(os.sched_getaffinity(int(tid))))
        if self.cgroup is not None:
            fname = "tasks" if self.mechanism == "cgroup-v1" else "cgroup.threads"
            members = set((self.cgroup / fname).read_text().split())
            in_cg = bool(tids) and all(t in members for t in tids)
        union = sorted(set().union(*masks)) if masks else []
        return CpuState(
            mechanism=self.mechanism,
            quota_cores=quota,
            cpus=tuple(union),
            threads=len(masks),
            threads_agree=len(set(masks)) <= 1,
            threads_in_cgroup=in_cg,
        )

    def throttled(self) -> int | None:
        """Periods in which the cgroup was throttled so far (None without a cgroup)."""
        if self.cgroup is None:
            return None
        for line in (self.cgroup / "cpu.stat").read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == "nr_throttled":
                return int(v)
        return None

    def cleanup(self) -> None:
        """Remove the cgroup (after the process exited). Idempotent."""
        if self.cgroup is not None:
            self._rmdir()
            self.cgroup = None


def cpus_for(cores: float, offset: int) -> tuple[int, ...]:
    """ceil(cores) CPUs of the available set, starting at `offset` (round-robin placement)."""
    avail = available_cpus()
    n = min(len(avail), max(1, math.ceil(cores - 1e-9)))
    return tuple(sorted(avail[(offset + i) % len(avail)] for i in range(n)))
