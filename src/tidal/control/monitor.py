"""Monitor: turns the gateway's in-process counters into per-stage windows.

The gateway (or any substrate) exposes a :class:`MetricsSource`: a cheap, in-process
``read()`` of cumulative per-stage counters plus the latencies and remaining budgets seen
since the previous read. The monitor samples it once per tick (the controller's period, 1 s
by default), differences the counters, and keeps a bounded history per stage:

- arrival rate (req/s) and completions, violations by cause (late / refused / expired /
  error) per sample;
- p50/p99 latency of the requests completed during the sample;
- queue length, in-flight, cores and replicas in force, CPU utilization.

From that history it builds the planners' inputs: ``rate_history`` (entry stage, one value
per sample) and one ``StageObservation`` per stage over a planner's metric window.
Nothing here reads wall time: sample times come from the injected Clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tidal.core.clock import Clock
from tidal.planners.base import StageObservation

CAUSES = ("late", "refused", "expired", "error")


@dataclass(frozen=True)
class StageCounters:
    """Cumulative counters of one stage at one instant, plus what happened since last read.

    `busy_core_s` is cumulative core-seconds spent computing batches (for utilization);
    `new_latencies_ms` are end-to-end (pipeline) or stage latencies of requests completed since
    the previous read; `budgets_ms` are remaining budgets of requests now queued, EDF order.
    """

    stage: str
    arrivals: int = 0
    completions: int = 0
    violations: dict[str, int] = field(default_factory=dict)
    queue_len: int = 0
    in_flight: int = 0
    busy_core_s: float = 0.0
    cores: float = 0.0
    replicas: int = 0
    new_latencies_ms: tuple[float, ...] = ()
    budgets_ms: tuple[float, ...] = ()
    variant_weights: dict[str, float] = field(default_factory=dict)
    alloc_core_s: float = 0.0
    busy_s: float = 0.0
    batches: int = 0
    batch_items: int = 0


class MonitorView(Protocol):
    """What the Controller reads of a monitor (the live `Monitor`; the simulator's
    `tidal.sim.monitor.SimMonitor`)."""

    @property
    def budgets_ms(self) -> tuple[float, ...]: ...

    def sample(self) -> object: ...

    def rate_history(self, stage: str | None = None) -> tuple[float, ...]: ...

    def observations(self, window_s: float) -> tuple[StageObservation, ...]: ...

    def service(self, stage: str, window_s: float) -> tuple[float, float, int]: ...


class MetricsSource(Protocol):
    """In-process access to a substrate's counters (never HTTP)."""

    def read(self) -> list[StageCounters]:
        """Counters of every stage, in pipeline order."""
        ...


@dataclass(frozen=True)
class StageSample:
    """One monitor sample of one stage over [t - dt, t]."""

    t: float
    dt: float
    arrival_rate: float
    completion_rate: float
    violations: dict[str, int]
    p50_ms: float
    p99_ms: float
    queue_len: int
    in_flight: int
    cores: float
    replicas: int
    utilization: float
    usage_cores: float
    variant_weights: dict[str, float]
    busy_s: float = 0.0
    batches: int = 0
    batch_items: int = 0

    @property
    def total_cores(self) -> float:
        return self.cores * self.replicas


def _pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if len(values) else math.nan


def window_observation(
    stage: str,
    dt: Sequence[float],
    arrival_rate: Sequence[float],
    alloc_cores: Sequence[float],
    usage_cores: Sequence[float],
    queue_len: int,
    in_flight: int,
    replicas: int,
    latencies_ms: Sequence[float] | np.ndarray,
) -> StageObservation:
    """The observation record of one stage over a window of samples (oldest first): sample
    durations `dt` (s), arrival rates (req/s), cores allocated (cores x replicas) and cores
    used during each; the queue, in-flight requests and ready replicas now; the latencies of
    the requests completed in the window. The live `Monitor` and the simulator's monitor
    (`tidal.sim.monitor`) both build it here, so planners see the same record (VPA's usage
    samples are one per sample: one per second live and simulated)."""
    span = sum(dt)
    if span <= 0:
        return StageObservation(stage=stage)
    rate = sum(r * d for r, d in zip(arrival_rate, dt, strict=True)) / span
    alloc = sum(a * d for a, d in zip(alloc_cores, dt, strict=True))
    used = sum(u * d for u, d in zip(usage_cores, dt, strict=True))
    return StageObservation(
        stage=stage,
        arrival_rate=rate,
        queue_len=queue_len,
        ongoing=(queue_len + in_flight) / max(1, replicas),
        cpu_utilization=used / alloc if alloc > 0 else 0.0,
        cpu_usage_cores=used / span,
        p99_ms=_pct(latencies_ms, 99) if len(latencies_ms) else 0.0,
        usage_samples=tuple(usage_cores),
    )


class Monitor:
    """Samples a MetricsSource and keeps `history_s` seconds of per-stage samples."""

    def __init__(self, source: MetricsSource, clock: Clock, history: int = 900) -> None:
        self.source = source
        self.clock = clock
        self.history = history
        self._prev: dict[str, StageCounters] = {}
        self._prev_t: float | None = None
        self.samples: dict[str, deque[StageSample]] = {}
        self.stage_order: list[str] = []
        self.budgets_ms: tuple[float, ...] = ()
        self.last: dict[str, StageCounters] = {}
        # Latencies of the last samples, kept for window percentiles.
        self._lat: dict[str, deque[tuple[float, tuple[float, ...]]]] = {}

    def sample(self) -> dict[str, StageSample]:
        """Read the source once; return (and store) the new sample of every stage.

        The first call only records the baseline and returns an empty dict.
        """
        now = self.clock.now()
        counters = self.source.read()
        self.stage_order = [c.stage for c in counters]
        if counters:
            self.budgets_ms = counters[0].budgets_ms
        out: dict[str, StageSample] = {}
        if self._prev_t is not None and now > self._prev_t:
            dt = now - self._prev_t
            for c in counters:
                p = self._prev.get(c.stage, StageCounters(stage=c.stage))
                viol = {k: c.violations.get(k, 0) - p.violations.get(k, 0) for k in CAUSES}
                alloc = c.cores * c.replicas * dt
                busy = max(0.0, c.busy_core_s - p.busy_core_s)
                s = StageSample(
                    t=now,
                    dt=dt,
                    arrival_rate=max(0, c.arrivals - p.arrivals) / dt,
                    completion_rate=max(0, c.completions - p.completions) / dt,
                    violations=viol,
                    p50_ms=_pct(c.new_latencies_ms, 50),
                    p99_ms=_pct(c.new_latencies_ms, 99),
                    queue_len=c.queue_len,
                    in_flight=c.in_flight,
                    cores=c.cores,
                    replicas=c.replicas,
                    utilization=busy / alloc if alloc > 0 else 0.0,
                    usage_cores=busy / dt,
                    variant_weights=dict(c.variant_weights),
                    busy_s=max(0.0, c.busy_s - p.busy_s),
                    batches=max(0, c.batches - p.batches),
                    batch_items=max(0, c.batch_items - p.batch_items),
                )
                self.samples.setdefault(c.stage, deque(maxlen=self.history)).append(s)
                self._lat.setdefault(c.stage, deque(maxlen=self.history)).append(
                    (now, c.new_latencies_ms)
                )
                out[c.stage] = s
        else:
            for c in counters:
                self.samples.setdefault(c.stage, deque(maxlen=self.history))
        self._prev = {c.stage: c for c in counters}
        self.last = dict(self._prev)
        self._prev_t = now
        return out

    def rate_history(self, stage: str | None = None) -> tuple[float, ...]:
        """Arrival rate per sample (oldest first) of `stage` (default: the entry stage)."""
        name = stage or (self.stage_order[0] if self.stage_order else "")
        return tuple(s.arrival_rate for s in self.samples.get(name, ()))

    def window(self, stage: str, window_s: float) -> list[StageSample]:
        """Samples of `stage` taken within the last `window_s` seconds."""
        now = self.clock.now()
        return [s for s in self.samples.get(stage, ()) if s.t > now - window_s - 1e-9]

    def window_latencies(self, stage: str, window_s: float) -> list[float]:
        now = self.clock.now()
        out: list[float] = []
        for t, lat in self._lat.get(stage, ()):
            if t > now - window_s - 1e-9:
                out.extend(lat)
        return out

    def observation(self, stage: str, window_s: float) -> StageObservation:
        """The planners' view of `stage` over the last `window_s` seconds."""
        w = self.window(stage, window_s)
        if not w:
            return StageObservation(stage=stage)
        last = w[-1]
        return window_observation(
            stage,
            [s.dt for s in w],
            [s.arrival_rate for s in w],
            [s.cores * s.replicas for s in w],
            [s.usage_cores for s in w],
            last.queue_len,
            last.in_flight,
            last.replicas,
            self.window_latencies(stage, window_s),
        )

    def service(self, stage: str, window_s: float) -> tuple[float, float, int]:
        """(mean batch service time in ms, mean batch size, batches) over the window, from
        the replicas' busy time; (nan, nan, 0) without batches."""
        w = self.window(stage, window_s)
        n = sum(s.batches for s in w)
        if n == 0:
            return math.nan, math.nan, 0
        busy = sum(s.busy_s for s in w)
        items = sum(s.batch_items for s in w)
        return 1000.0 * busy / n, items / n, n

    def observations(self, window_s: float) -> tuple[StageObservation, ...]:
        return tuple(self.observation(s, window_s) for s in self.stage_order)
