"""Open-loop load generator for any Open Inference Protocol v2 endpoint.

Open loop: request i is sent at its scheduled time whatever happened to earlier requests
(a closed-loop client would slow down with the server and hide its overload). The schedule
(arrival offsets in seconds, optional per-request budgets in ms) comes from a trace replay
(`tidal.workload` loaders: Poisson within each second, damping, time compression): see
:func:`schedule_from_trace`.

Every request's outcome is recorded (CSV, one row per request). The generator checks that it
kept up: the dispatch lag (actual send time - scheduled time) and the in-flight cap are
reported, and `LoadReport.kept_up` is False, with the reason, when it fell behind.

HTTP is aiohttp on one asyncio loop (httpx saturates first on this machine).
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from tidal.core.clock import Clock, MonotonicClock
from tidal.core.errors import TidalError
from tidal.workload import arrivals, dynamic_slos, load_trace

# A request counts as dispatched late when it leaves more than this after its schedule.
LAG_TOLERANCE_S = 0.010
# The generator is "keeping up" when at most this fraction of requests left late.
LATE_DISPATCH_MAX_FRACTION = 0.01

OUTCOME_FIELDS = (
    "id",
    "scheduled_s",
    "sent_s",
    "latency_ms",
    "budget_ms",
    "status",
    "outcome",
    "variant",
    "error",
)


@dataclass(frozen=True)
class Schedule:
    """Arrival offsets (seconds from the start, sorted) and per-request budgets (ms or None)."""

    offsets: tuple[float, ...]
    budgets_ms: tuple[float | None, ...] = ()

    def __post_init__(self) -> None:
        if any(b < a for a, b in zip(self.offsets, self.offsets[1:], strict=False)):
            raise TidalError("schedule offsets must be sorted ascending")
        if self.budgets_ms and len(self.budgets_ms) != len(self.offsets):
            raise TidalError(
                f"schedule has {len(self.offsets)} arrivals but {len(self.budgets_ms)} budgets"
            )

    def budget(self, i: int) -> float | None:
        return self.budgets_ms[i] if self.budgets_ms else None

    @property
    def duration_s(self) -> float:
        return self.offsets[-1] if self.offsets else 0.0


def schedule_from_rates(
    rates: Sequence[float] | np.ndarray,
    *,
    seed: int = 0,
    slo_ms: float | None = None,
    lte: bool = False,
    duration_s: float | None = None,
) -> Schedule:
    """Arrivals for per-second `rates` (the simulator's generator, `tidal.workload.arrivals`:
    the trace's exact count per second when rates are integers, else Poisson; uniform within
    the second), cut at `duration_s`. Budgets: Sponge's LTE dynamic SLOs when `lte` (needs
    ../shared), else the fixed `slo_ms`, else none (the server's default)."""
    r = np.asarray(rates, dtype=float)
    if duration_s is not None:
        r = r[: max(0, math.ceil(duration_s))]
    t = arrivals(r, seed=seed)
    if duration_s is not None:
        t = t[t < duration_s]
    budgets: tuple[float | None, ...] = ()
    if lte:
        budgets = tuple(float(b) for b in dynamic_slos(t, slo_ms or 1000.0, seed=seed))
    elif slo_ms is not None:
        budgets = (float(slo_ms),) * len(t)
    return Schedule(tuple(float(x) for x in t), budgets)


def schedule_from_trace(
    spec: str,
    *,
    damping: int | None = None,
    compress: int = 1,
    seed: int = 0,
    slo_ms: float | None = None,
    lte: bool = False,
    duration_s: float | None = None,
) -> Schedule:
    """A Schedule replaying trace `spec` (`tidal.workload.load_trace`: twitter windows,
    synthetic shapes) with integer `damping` and time compression `compress`."""
    rates = load_trace(spec, damping=damping, compress=compress, seed=seed)
    return schedule_from_rates(rates, seed=seed, slo_ms=slo_ms, lte=lte, duration_s=duration_s)


@dataclass
class Outcome:
    """One request's fate. `outcome` is ok | late | refused | expired | error; `variant` is
    the variant that served it (pipelines: one per stage, joined by "+")."""

    id: int
    scheduled_s: float
    sent_s: float = math.nan
    latency_ms: float = math.nan
    budget_ms: float | None = None
    status: int = 0
    outcome: str = "error"
    variant: str = ""
    error: str = ""


@dataclass
class LoadReport:
    """Summary of a replay. Violations = late + refused + expired + error (over sent)."""

    requests: int
    duration_s: float
    target_rps: float
    achieved_rps: float
    counts: dict[str, int]
    violation_rate: float
    p50_ms: float
    p99_ms: float
    late_dispatch_fraction: float
    max_lag_ms: float
    max_in_flight: int
    kept_up: bool
    reason: str = ""
    outcomes_file: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def classify(status: int, latency_ms: float, budget_ms: float | None) -> str:
    """ok / late / refused (503) / expired (504) / error, from the client's point of view."""
    if status == 200:
        return "late" if budget_ms is not None and latency_ms > budget_ms else "ok"
    if status == 503:
        return "refused"
    if status == 504:
        return "expired"
    return "error"


def v2_body_from_metadata(meta: dict[str, Any], batch: int = 1) -> dict[str, Any]:
    """A valid OIP v2 infer body (zeros) for a model's metadata (`GET /v2/models/{name}`).

    Dynamic dimensions (-1) become `batch` for the first and 1 for the others.
    """
    inputs = []
    for spec in meta.get("inputs", []):
        shape = _shape(spec, batch)
        dtype = str(spec.get("datatype", "FP32"))
        n = int(np.prod(shape)) if shape else 1
        zero: float | int | bool = 0.0 if dtype.startswith("FP") else 0
        if dtype == "BOOL":
            zero = False
        inputs.append({"name": spec["name"], "shape": shape, "datatype": dtype, "data": [zero] * n})
    if not inputs:
        raise TidalError(f"model metadata has no inputs: {meta}")
    return {"inputs": inputs}


_NP = {"FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "INT64": "<i8", "INT32": "<i4", "UINT8": "u1"}


def _shape(spec: dict[str, Any], batch: int) -> list[int]:
    return [
        (batch if i == 0 else 1) if int(d) < 0 else int(d)
        for i, d in enumerate(spec.get("shape", [1]))
    ]


def v2_binary_body_from_metadata(meta: dict[str, Any], batch: int = 1) -> tuple[bytes, int]:
    """The same request with the OIP binary tensor extension: (body, JSON header length) for
    the `Inference-Header-Content-Length` header. Integer inputs get id 1 (a valid token)."""
    header_inputs = []
    blobs = []
    for spec in meta.get("inputs", []):
        shape = _shape(spec, batch)
        dtype = str(spec.get("datatype", "FP32"))
        if dtype not in _NP:
            raise TidalError(f"binary body: unsupported datatype {dtype!r}")
        arr = np.zeros(shape, dtype=_NP[dtype])
        if arr.dtype.kind in "iu":
            arr += 1
        blob = arr.tobytes()
        blobs.append(blob)
        header_inputs.append(
            {
                "name": spec["name"],
                "shape": shape,
                "datatype": dtype,
                "parameters": {"binary_data_size": len(blob)},
            }
        )
    if not header_inputs:
        raise TidalError(f"model metadata has no inputs: {meta}")
    head = json.dumps({"inputs": header_inputs}).encode()
    return head + b"".join(blobs), len(head)


class LoadGenerator:
    """Replays a Schedule open-loop against `url` (`.../v2/models/{name}/infer`).

    `body` is the JSON request body (the same for every request, serialized once), or raw
    bytes with `header_length` for the binary tensor extension. Each request carries its own
    budget in the `x-tidal-slo-ms` header, and for a JSON body also as the `slo_ms` parameter.
    `propagate_budget`: the budget sent is what is left of it when the request is sent (less
    the dispatch lag behind its scheduled time; deadline propagation), not the scheduled one.
    `on_progress(sent, total)` is called about every 0.25 s of replay.
    """

    def __init__(
        self,
        url: str,
        body: dict[str, Any] | bytes,
        *,
        header_length: int | None = None,
        max_in_flight: int = 2000,
        timeout_s: float = 30.0,
        clock: Clock | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        lag_tolerance_s: float = LAG_TOLERANCE_S,
        propagate_budget: bool = False,
    ) -> None:
        if max_in_flight < 1:
            raise TidalError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.url = url
        self.lag_tolerance_s = lag_tolerance_s
        self.propagate_budget = propagate_budget
        self.body = body
        self.header_length = header_length
        if isinstance(body, bytes):
            self._raw = body
            self._split: tuple[bytes, bytes] | None = None
        else:
            self._raw = json.dumps(body).encode()
            # `{"parameters": {...}, ` is spliced in front of the rest of the object.
            rest = json.dumps({k: v for k, v in body.items() if k != "parameters"}).encode()
            self._split = (b"{", rest[1:]) if "parameters" not in body else None
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.clock = clock or MonotonicClock()
        self.on_progress = on_progress
        self._in_flight = 0
        self._peak = 0
        self._capped = 0

    async def _one(
        self, session: aiohttp.ClientSession, i: int, t0: float, budget: float | None, o: Outcome
    ) -> None:
        data = self._raw
        headers = {"content-type": "application/json"}
        if self.header_length is not None:
            headers = {
                "content-type": "application/octet-stream",
                "inference-header-content-length": str(self.header_length),
            }
        if budget is not None and self.propagate_budget:  # what is left of it by now
            budget = max(1e-3, budget - (self.clock.now() - t0 - o.scheduled_s) * 1000.0)
        if budget is not None:
            headers["x-tidal-slo-ms"] = f"{budget:.3f}"
            if self._split is not None:
                head, rest = self._split
                sep = b", " if rest.strip() != b"}" else b""
                data = head + b'"parameters": {"slo_ms": %.3f}' % budget + sep + rest
        o.budget_ms = budget
        o.sent_s = self.clock.now() - t0
        self._in_flight += 1
        self._peak = max(self._peak, self._in_flight)
        start = self.clock.now()
        try:
            async with session.post(self.url, data=data, headers=headers) as resp:
                raw = await resp.read()
                o.status = resp.status
                o.latency_ms = (self.clock.now() - start) * 1000.0
                if resp.status == 200:
                    try:
                        params = json.loads(raw).get("parameters") or {}
                        vs = params.get("variants")
                        o.variant = (
                            "+".join(str(v) for v in vs)
                            if isinstance(vs, list)
                            else str(params.get("variant", ""))
                        )
                    except (ValueError, AttributeError):
                        o.variant = ""
                else:
                    o.error = raw[:200].decode("utf-8", "replace").replace("\n", " ")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            o.latency_ms = (self.clock.now() - start) * 1000.0
            o.error = f"{type(e).__name__}: {e}"[:200]
        finally:
            self._in_flight -= 1
        o.outcome = classify(o.status, o.latency_ms, budget)

    async def run(self, schedule: Schedule) -> tuple[list[Outcome], LoadReport]:
        """Replay `schedule`; return every outcome and the summary."""
        n = len(schedule.offsets)
        outcomes = [Outcome(i, schedule.offsets[i]) for i in range(n)]
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.max_in_flight, force_close=False)
        tasks: list[asyncio.Task[None]] = []
        late = 0
        max_lag = 0.0
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            t0 = self.clock.now()
            last_progress = t0
            i = 0
            while i < n:
                now = self.clock.now()
                due = t0 + schedule.offsets[i]
                if due > now:
                    await asyncio.sleep(due - now)
                    continue
                # Dispatch everything that is due (bursts within one loop turn).
                while i < n and t0 + schedule.offsets[i] <= self.clock.now():
                    lag = self.clock.now() - (t0 + schedule.offsets[i])
                    max_lag = max(max_lag, lag)
                    if lag > self.lag_tolerance_s:
                        late += 1
                    if self._in_flight >= self.max_in_flight:
                        self._capped += 1
                    budget = schedule.budget(i)
                    tasks.append(
                        asyncio.create_task(self._one(session, i, t0, budget, outcomes[i]))
                    )
                    i += 1
                if self.on_progress and self.clock.now() - last_progress >= 0.25:
                    last_progress = self.clock.now()
                    self.on_progress(i, n)
                await asyncio.sleep(0)
            if tasks:
                await asyncio.gather(*tasks)
            elapsed = self.clock.now() - t0
        if self.on_progress:
            self.on_progress(n, n)
        return outcomes, self._report(schedule, outcomes, late, max_lag, elapsed)

    def _report(
        self,
        schedule: Schedule,
        outcomes: list[Outcome],
        late: int,
        max_lag: float,
        elapsed: float,
    ) -> LoadReport:
        n = len(outcomes)
        counts = {k: 0 for k in ("ok", "late", "refused", "expired", "error")}
        for o in outcomes:
            counts[o.outcome] += 1
        lat = np.array([o.latency_ms for o in outcomes if o.status == 200])
        dur = max(schedule.duration_s, 1e-9)
        sent_span = max((o.sent_s for o in outcomes if not math.isnan(o.sent_s)), default=0.0)
        late_frac = late / n if n else 0.0
        reasons = []
        if late_frac > LATE_DISPATCH_MAX_FRACTION:
            reasons.append(
                f"{late_frac:.1%} of requests left more than {self.lag_tolerance_s * 1000:.0f} ms "
                f"after their scheduled time (max lag {max_lag * 1000:.0f} ms)"
            )
        if self._capped:
            reasons.append(
                f"{self._capped} requests were sent with {self.max_in_flight} already in flight "
                "(connection cap reached: no longer open loop)"
            )
        return LoadReport(
            requests=n,
            duration_s=elapsed,
            target_rps=n / dur if n else 0.0,
            achieved_rps=n / max(sent_span, 1e-9) if n > 1 else float(n),
            counts=counts,
            violation_rate=(n - counts["ok"]) / n if n else 0.0,
            p50_ms=float(np.percentile(lat, 50)) if lat.size else math.nan,
            p99_ms=float(np.percentile(lat, 99)) if lat.size else math.nan,
            late_dispatch_fraction=late_frac,
            max_lag_ms=max_lag * 1000.0,
            max_in_flight=self._peak,
            kept_up=not reasons,
            reason="; ".join(reasons),
        )


def write_outcomes(path: str | Path, outcomes: Sequence[Outcome]) -> None:
    """Write one CSV row per request (header: OUTCOME_FIELDS)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(OUTCOME_FIELDS)
        for o in outcomes:
            w.writerow(
                [
                    o.id,
                    f"{o.scheduled_s:.6f}",
                    f"{o.sent_s:.6f}",
                    f"{o.latency_ms:.3f}",
                    "" if o.budget_ms is None else f"{o.budget_ms:.1f}",
                    o.status,
                    o.outcome,
                    o.variant,
                    o.error,
                ]
            )


async def fetch_metadata(base_url: str, model: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """`GET {base_url}/v2/models/{model}`; TidalError naming the URL when unreachable."""
    url = f"{base_url.rstrip('/')}/v2/models/{model}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s,
            s.get(url) as r,
        ):
            if r.status != 200:
                raise TidalError(f"{url} answered {r.status}: {(await r.text())[:200]}")
            meta: dict[str, Any] = await r.json()
            return meta
    except aiohttp.ClientError as e:
        raise TidalError(f"cannot reach {url}: {e}") from None
