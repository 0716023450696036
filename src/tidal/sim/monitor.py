"""The controller's monitor in the simulator.

The live `tidal.control.monitor.Monitor` samples the gateway once per second; sampling a
simulated run object by object every second would cost more than the simulation itself (22
days = 1.9 M samples). The simulator records per-second series instead (entry arrivals,
arrivals, busy core-seconds and allocated cores per stage) and this monitor builds, at each
decision, the same observation record from them (`window_observation`, one sample per
second: VPA gets its 60 usage samples here as live), plus the rate history and the entry
queue's budgets. It implements what `tidal.control.controller.Controller` reads of a
monitor: `sample`, `rate_history`, `budgets_ms`, `observations`, `service` (the batches'
measured service time, which the controller's calibration compares with the profile it
plans with; recorded when the run calibrates, `SimConfig.calibrate`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from tidal.control.monitor import window_observation
from tidal.planners.base import StageObservation
from tidal.sim.config import US


def _window(a: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """a[lo:hi] as float64, zero-padded past the end of `a` (the drain after the trace)."""
    out = np.zeros(hi - lo, dtype=np.float64)
    part = a[lo:hi]
    out[: len(part)] = part
    return out


class SeriesRecorder:
    """Per-second series of one run, per stage: arrivals, busy core-us, ready core-us; with
    `service`, also what the live monitor's `service` reads (`ServiceSeries`)."""

    def __init__(self, n_stages: int, seconds: int, service: bool = False) -> None:
        self.seconds = seconds
        self.arrivals = np.zeros((n_stages, seconds), dtype=np.float64)
        self.busy_core_us = np.zeros((n_stages, seconds), dtype=np.float64)
        self.alloc_core_us = np.zeros((n_stages, seconds), dtype=np.float64)
        self.service = ServiceSeries(n_stages, seconds) if service else None

    def add_alloc(self, stage: int, t0_us: int, t1_us: int, cores: float) -> None:
        """`cores` were ready at `stage` during [t0, t1) (microseconds)."""
        if t1_us <= t0_us or cores <= 0:
            return
        a, b = t0_us // US, t1_us // US
        row = self.alloc_core_us[stage]
        n = self.seconds
        if a == b:
            if a < n:
                row[a] += cores * (t1_us - t0_us)
            return
        if a < n:
            row[a] += cores * ((a + 1) * US - t0_us)
        if a + 1 < min(b, n):
            row[a + 1 : min(b, n)] += cores * US
        if b < n:
            row[b] += cores * (t1_us - b * US)


class ServiceSeries:
    """Per (stage, second) of completion: batches completed, their requests and their service
    time (replica-us), as the live gateway counts them when a batch ends (`busy_s`, the batch
    size histogram). The controller's calibration reads them (`SimMonitor.service`)."""

    def __init__(self, n_stages: int, seconds: int) -> None:
        self.seconds = seconds
        self.busy_us = np.zeros((n_stages, seconds), dtype=np.float64)
        self.batches = np.zeros((n_stages, seconds), dtype=np.int64)
        self.items = np.zeros((n_stages, seconds), dtype=np.int64)

    def add(self, stage: int, end_us: int, dur_us: int, size: int) -> None:
        """A batch of `size` requests that ran `dur_us` ends at `end_us`."""
        sec = end_us // US
        if sec < self.seconds:
            self.busy_us[stage, sec] += dur_us
            self.batches[stage, sec] += 1
            self.items[stage, sec] += size


class SimMonitor:
    """What the Controller reads of a monitor, over a simulated run's per-second series."""

    def __init__(
        self,
        stages: Sequence[str],
        series: SeriesRecorder,
        entry_counts: np.ndarray,
        warm_rate: float,
        history_s: int,
        queue_len: Callable[[int], int],
        in_flight: Callable[[int], int],
        ready_replicas: Callable[[int], int],
        budgets_ms: Callable[[int], tuple[float, ...]],
        latencies_ms: Callable[[], np.ndarray],
        shift_us: int = 0,
    ) -> None:
        """`shift_us`: the series' second k is [k*1e6 - shift_us, (k+1)*1e6 - shift_us), so
        that with control ticks at k - shift the monitor's seconds end at the ticks, as a
        live monitor's samples are taken at its controller's ticks."""
        self.stages = list(stages)
        self.series = series
        self.entry_counts = entry_counts
        self.warm_rate = warm_rate
        self.history_s = history_s
        self._queue_len = queue_len
        self._in_flight = in_flight
        self._ready = ready_replicas
        self._budgets = budgets_ms
        self._latencies = latencies_ms
        self.now_us = 0
        self.shift_us = shift_us

    def sample(self) -> dict[str, object]:
        """Nothing to do: the series are recorded as the run goes."""
        return {}

    def rate_history(self, stage: str | None = None) -> tuple[float, ...]:
        """Entry arrivals per second, oldest first (the last `history_s` whole seconds). At
        t = 0 the service was already running: 60 s at the trace's first rate. The seconds of
        the drain after the trace are 0-rate seconds, as a live monitor counts them (the
        history keeps growing; it does not freeze on the trace's last second)."""
        sec = (self.now_us + self.shift_us) // US
        if self.now_us == 0:
            return tuple([self.warm_rate] * 60)
        lo = max(0, sec - self.history_s)
        return tuple(_window(self.entry_counts, lo, sec).tolist())

    @property
    def budgets_ms(self) -> tuple[float, ...]:
        return self._budgets(self.now_us)

    def observations(self, window_s: float) -> tuple[StageObservation, ...]:
        """One record per stage over the whole seconds of the last `window_s` (none at t=0,
        before any sample, as a live monitor before its first sample)."""
        sec = (self.now_us + self.shift_us) // US
        if sec <= 0:
            return ()
        lo = max(0, sec - max(1, int(math.ceil(window_s))))
        n = sec - lo
        dt = [1.0] * n
        lat = self._latencies()
        out = []
        for s, name in enumerate(self.stages):
            rate = _window(self.series.arrivals[s] if s else self.entry_counts, lo, sec)
            out.append(
                window_observation(
                    name,
                    dt,
                    rate.tolist(),
                    (_window(self.series.alloc_core_us[s], lo, sec) / US).tolist(),
                    (_window(self.series.busy_core_us[s], lo, sec) / US).tolist(),
                    self._queue_len(s),
                    self._in_flight(s),
                    self._ready(s),
                    lat,
                )
            )
        return tuple(out)

    def service(self, stage: str, window_s: float) -> tuple[float, float, int]:
        """(mean batch service time in ms, mean batch size, batches) of the batches completed
        in the whole seconds of the last `window_s`, as the live monitor's; (nan, nan, 0)
        without batches or when the run records no service series."""
        srv = self.series.service
        sec = (self.now_us + self.shift_us) // US
        if srv is None or sec <= 0:
            return math.nan, math.nan, 0
        s = self.stages.index(stage)
        lo = max(0, sec - max(1, int(math.ceil(window_s))))
        hi = min(sec, srv.seconds)
        n = int(srv.batches[s, lo:hi].sum())
        if n == 0:
            return math.nan, math.nan, 0
        busy_ms = float(srv.busy_us[s, lo:hi].sum()) / 1000.0
        return busy_ms / n, float(srv.items[s, lo:hi].sum()) / n, n
