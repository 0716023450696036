"""Per-stage counters of the live data plane: one source for the in-process snapshot (read by
the controller) and for Prometheus `/metrics` (a custom collector that reads them at scrape).

Hot-path cost is a few integer additions per request; nothing here locks (the data plane is
single-threaded on its event loop).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

VIOLATION_CAUSES = ("late", "refused", "expired", "error")
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)
EVENT_BUCKETS_S = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histo:
    """A fixed-bucket histogram (cumulative at export)."""

    __slots__ = ("bounds", "counts", "sum", "n")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.n = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.sum += v
        self.n += 1

    def buckets(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for b, c in zip(self.bounds, self.counts, strict=False):
            acc += c
            out.append((repr(float(b)), float(acc)))
        out.append(("+Inf", float(self.n)))
        return out


@dataclass
class StageCounters:
    """Cumulative counters of one stage (all variants). Times in seconds."""

    arrivals: int = 0
    completions: int = 0
    violations: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VIOLATION_CAUSES, 0))
    latency: Histo = field(default_factory=lambda: Histo(LATENCY_BUCKETS_S))
    batch: Histo = field(default_factory=lambda: Histo(BATCH_BUCKETS))
    cold_start: Histo = field(default_factory=lambda: Histo(EVENT_BUCKETS_S))
    resize: Histo = field(default_factory=lambda: Histo(EVENT_BUCKETS_S))
    replica_deaths: int = 0
    busy_s: float = 0.0
    busy_core_s: float = 0.0
    in_flight: int = 0
    window: deque[float] = field(default_factory=lambda: deque(maxlen=2048))
    cancelled: int = 0
    """Requests whose client went away: removed from the queue, or result dropped."""
    watchdog_kills: int = 0
    """Replicas the watchdog found sick (overdue or stalled batch) and killed."""


@dataclass(frozen=True)
class StageSnapshot:
    """What the controller reads in process (`Gateway.metrics_snapshot()[stage]`).

    Counters are cumulative since start (take differences between two snapshots):
    `arrivals`, `completions`, `violations[cause]` (cause in late/refused/expired/error),
    `busy_s` (replica-seconds spent running batches), `busy_core_s` (the same weighted by each
    replica's cores at the time), `replica_s` (replica-seconds of ready and starting
    replicas), `core_s` (core-seconds held by ready and starting replicas: the cost, as the
    simulator counts it). CPU utilization over an interval = d(busy_s * cores) / d(core_s)
    ~= d(busy_s) / d(replica_s).
    Instantaneous: `queue_len`, `in_flight` (requests in batches being run), `budgets_ms`
    (remaining budgets of queued requests, EDF order),
    `replicas` (ready), `starting` (being started), `cores` (per replica, by variant),
    `total_cores` (sum over ready replicas),
    `batch` (max batch in force), `latency_ms` (the last <= 2048 end-to-end-at-this-stage
    latencies, oldest first), `now` (clock seconds of the snapshot).
    Hardening (issue 13): `cancelled` (clients that went away, cumulative), `watchdog_kills`
    (sick replicas killed, cumulative), `queued_rows` / `queued_bytes` (now, all lanes).
    """

    stage: str
    now: float
    arrivals: int
    completions: int
    violations: dict[str, int]
    busy_s: float
    busy_core_s: float
    replica_s: float
    core_s: float
    queue_len: int
    in_flight: int
    budgets_ms: tuple[float, ...]
    replicas: int
    starting: int
    cores: dict[str, float]
    total_cores: float
    batch: int
    latency_ms: tuple[float, ...]
    replica_deaths: int
    cancelled: int = 0
    watchdog_kills: int = 0
    queued_rows: int = 0
    queued_bytes: int = 0


class DataplaneCollector(Collector):
    """Prometheus collector exporting every stage's counters (read at scrape time)."""

    def __init__(self, snapshot: Callable[[], dict[str, tuple[StageSnapshot, StageCounters]]]):
        self._snapshot = snapshot

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        data = self._snapshot()
        arr = CounterMetricFamily(
            "tidal_arrivals", "Requests arrived at the stage", labels=["stage"]
        )
        comp = CounterMetricFamily(
            "tidal_completions", "Requests answered by the stage", labels=["stage"]
        )
        viol = CounterMetricFamily(
            "tidal_slo_violations", "SLO violations by cause", labels=["stage", "cause"]
        )
        deaths = CounterMetricFamily(
            "tidal_replica_deaths", "Worker processes that died", labels=["stage"]
        )
        busy = CounterMetricFamily(
            "tidal_busy_seconds", "Replica-seconds spent running batches", labels=["stage"]
        )
        qlen = GaugeMetricFamily("tidal_queue_length", "Queued requests", labels=["stage"])
        reps = GaugeMetricFamily("tidal_replicas", "Ready replicas in force", labels=["stage"])
        starting = GaugeMetricFamily(
            "tidal_replicas_starting", "Replicas being started", labels=["stage"]
        )
        cores = GaugeMetricFamily(
            "tidal_cores", "Cores per replica in force", labels=["stage", "variant"]
        )
        tcores = GaugeMetricFamily(
            "tidal_cores_total", "Cores allocated to the stage's ready replicas", labels=["stage"]
        )
        maxb = GaugeMetricFamily("tidal_max_batch", "Max batch size in force", labels=["stage"])
        canc = CounterMetricFamily(
            "tidal_cancelled", "Requests whose client went away", labels=["stage"]
        )
        wdog = CounterMetricFamily(
            "tidal_watchdog_kills", "Sick replicas killed by the watchdog", labels=["stage"]
        )
        qrows = GaugeMetricFamily("tidal_queued_rows", "Queued rows", labels=["stage"])
        qbytes = GaugeMetricFamily("tidal_queued_bytes", "Queued payload bytes", labels=["stage"])
        hists = {
            "latency": HistogramMetricFamily(
                "tidal_latency_seconds",
                "Time from arrival to answer at the stage",
                labels=["stage"],
            ),
            "batch": HistogramMetricFamily(
                "tidal_batch_size", "Size of dispatched batches", labels=["stage"]
            ),
            "cold_start": HistogramMetricFamily(
                "tidal_cold_start_seconds", "Replica start to warm", labels=["stage"]
            ),
            "resize": HistogramMetricFamily(
                "tidal_resize_seconds", "In-place resize durations", labels=["stage"]
            ),
        }
        for stage, (snap, c) in data.items():
            arr.add_metric([stage], snap.arrivals)
            comp.add_metric([stage], snap.completions)
            for cause, v in snap.violations.items():
                viol.add_metric([stage, cause], v)
            deaths.add_metric([stage], snap.replica_deaths)
            busy.add_metric([stage], snap.busy_s)
            qlen.add_metric([stage], snap.queue_len)
            reps.add_metric([stage], snap.replicas)
            starting.add_metric([stage], snap.starting)
            for variant, cc in snap.cores.items():
                cores.add_metric([stage, variant], cc)
            tcores.add_metric([stage], snap.total_cores)
            maxb.add_metric([stage], snap.batch)
            canc.add_metric([stage], snap.cancelled)
            wdog.add_metric([stage], snap.watchdog_kills)
            qrows.add_metric([stage], snap.queued_rows)
            qbytes.add_metric([stage], snap.queued_bytes)
            for key, fam in hists.items():
                h: Histo = getattr(c, key)
                fam.add_metric([stage], h.buckets(), h.sum)
        yield from (arr, comp, viol, deaths, busy, qlen, reps, starting, cores, tcores, maxb)
        yield from (canc, wdog, qrows, qbytes)
        yield from hists.values()
