"""Early refusal: answer 503 to a request that cannot finish in time before its body is read
(at the headers) or before it is parsed (after the body) (issue 13; issue 14's goodput at 2x).

Why: on a small machine the gateway's own work competes with the replicas for the cores, and
a refusal that waits for a large body to arrive and parse is slow for the client too. A
resnet18 request in OIP JSON is 887 KB; decoding it costs ~36 ms of CPU (orjson, then numpy).
Pricing a request needs only its deadline and a lower bound on its rows.

The SLO of a REST request (`tidal.dataplane.http`): the TIGHTER of the body's
``parameters.slo_ms`` and the ``x-tidal-slo-ms`` header when both are given; either one
alone; else the model's default SLO. So a header deadline is an upper bound on the deadline
the body can carry, which is what lets the headers stage refuse with certainty.

Two stages, each refusing only when the full path would refuse too (up to the arrivals in
between):

- `headers_refusal`, from the request line and headers, before any body byte is read: the
  deadline bound is the header's SLO when present, else ``max_slo_ms`` (the loosest deadline
  any body may carry); the rows are at least 1, and for the binary tensor extension at least
  ``ceil((Content-Length - Inference-Header-Content-Length) / bytes per row of all inputs)``
  (every binary byte belongs to an input's rows; identity encoding and fixed sample shapes
  only). A one-row request without a header deadline is priced here only while its first
  stage is refusing (`RECENT_S`): at the loosest deadline an admitting stage never refuses
  it, and the body stage prices it once with its real deadline;
- `early_refusal`, after the body, before the decode: the SLO from the raw bytes
  (`slo_hint`: the body's ``"slo_ms"`` when named exactly once, min'd with the header), at
  least 1 row. When it admits, the lane carries the verdict to the same request's
  `GroupScheduler.push` (the deadline, rows and lane unchanged, within `QUOTE_TTL_S`):
  the request is priced once on its way, not again in the scheduler.

Each asks the model's first stage (`Stage.quote`, the scheduler's own admission without
queueing anything): a refusal is returned only when every lane the router may pick would
refuse those rows by that deadline (an idle lane only refuses a batch longer than the
budget, as the scheduler does). `RefusalTimes` keeps the
server-side refusal latency (headers parsed -> 503 handed to the transport), per stage.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from tidal.dataplane.replica import Refused
from tidal.dataplane.tensors import DATATYPES

RECENT_S = 1.0
"""A one-row request without a header deadline is priced at its headers only when its first
stage refused a request within this many seconds (it could be refused only at the loosest
deadline any body may carry, which an admitting stage never refuses)."""
_KEY = b'"slo_ms"'
_VALUE = re.compile(rb"\s*:\s*(-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)\s*[,}]")
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
WHERE = ("headers", "body", "admission")
"""Where a refusal was decided: at the headers, after the body (before the decode), or by
the scheduler's admission after the decode."""


def _header_slo(slo_header: bytes | None) -> float | None:
    if slo_header is None:
        return None
    try:
        v = float(slo_header)
    except ValueError:
        return math.nan
    return v if math.isfinite(v) else math.nan


def slo_hint(
    body: bytes, header_len: int | None, slo_header: bytes | None, default_ms: float
) -> float | None:
    """The request's SLO in ms from its raw bytes (see the module docstring: the tighter of
    the body's and the header's), or None when only the full parse can tell (a body naming
    it twice or not as a plain number, a header that is not a number)."""
    head = body if header_len is None else body[:header_len]
    hdr = _header_slo(slo_header)
    if hdr is not None and math.isnan(hdr):
        return None
    n = head.count(_KEY)
    if n > 1:
        return None
    if n == 1:
        m = _VALUE.match(head, head.rfind(_KEY) + len(_KEY))
        if m is None:
            return None
        v = float(m.group(1))
        return v if hdr is None else min(v, hdr)
    return default_ms if hdr is None else hdr


def row_bytes(inputs: Iterable[Any]) -> int | None:
    """Bytes per row summed over all inputs (fixed sample shapes, fixed-size datatypes), or
    None when a row's size is not fixed."""
    total = 0
    for meta in inputs:
        dt = DATATYPES.get(meta.datatype)
        if dt is None or meta.datatype == "BYTES" or any(d <= 0 for d in meta.sample_shape):
            return None
        total += dt.itemsize * math.prod(meta.sample_shape)
    return total or None


def rows_at_least(
    content_length: int | None, header_len: int | None, encoded: bool, per_row: int | None
) -> int:
    """A lower bound on a request's rows from its headers (see the module docstring)."""
    if encoded or per_row is None or content_length is None or header_len is None:
        return 1
    return max(1, -(-(content_length - header_len) // per_row))


def _answer(v: Refused) -> Answer:
    out: dict[str, Any] = {"error": v.reason, "cause": v.cause}
    headers: list[tuple[bytes, bytes]] = []
    if v.retry_after_s is not None:
        out["retry_after_ms"] = round(v.retry_after_s * 1e3, 3)
        headers.append((b"retry-after", str(max(1, math.ceil(v.retry_after_s))).encode()))
    return v.status, orjson.dumps(out), headers


def _quote(
    gw: Any, model: str, rows: int, slo_ms: float, arrival: float | None, lazy: bool = False
) -> Answer | None:
    """`lazy`: skip the pricing (None) unless the stage refused within `RECENT_S`."""
    snames = gw.routes.get(model)
    if not snames or model in getattr(gw, "_unloading", ()):
        return None
    stage = gw.stages[snames[0]]
    now = gw.clock.now()
    if lazy and now - stage.last_refused > RECENT_S:
        return None
    t0 = now if arrival is None else min(arrival, now)
    v: Refused | None = stage.quote(rows, t0 + slo_ms * 1e-3, now)
    return None if v is None else _answer(v)


def headers_refusal(
    gw: Any,
    model: str,
    slo_header: bytes | None,
    rows: int,
    arrival: float | None,
    max_slo_ms: float,
) -> Answer | None:
    """(503, body, headers) for a request to `model` of at least `rows` rows that its first
    stage would refuse whatever deadline its body carries (see the module docstring); None:
    read the body."""
    hdr = _header_slo(slo_header)
    if hdr is None:
        bound = max(max_slo_ms, gw.config.default_slo_ms)
    elif not 0 < hdr <= max_slo_ms:
        return None  # the full path names the bad value (400)
    else:
        bound = hdr
    # one row at the loosest deadline: priced only while the stage is refusing (else the
    # body stage, the first to know the deadline, prices it once for the whole path)
    return _quote(gw, model, rows, bound, arrival, lazy=hdr is None and rows <= 1)


def headers_priced(gw: Any, model: str) -> bool:
    """Whether `headers_refusal` would price a one-row request to `model` without a header
    deadline (its first stage refused within `RECENT_S`); True when that needs the full
    call (an unknown model or route: `headers_refusal` answers None itself)."""
    snames = gw.routes.get(model)
    if not snames:
        return True
    return bool(gw.clock.now() - gw.stages[snames[0]].last_refused <= RECENT_S)


def early_refusal(
    gw: Any,
    model: str,
    body: bytes,
    header_len: int | None,
    slo_header: bytes | None,
    arrival: float | None,
    max_slo_ms: float,
) -> Answer | None:
    """(503, body, headers) for a request to `model` that its first stage would refuse even
    at one row (see the module docstring); None: take the full path."""
    slo = slo_hint(body, header_len, slo_header, gw.config.default_slo_ms)
    if slo is None or not 0 < slo <= max_slo_ms:
        return None  # the full parse answers (and names a bad value)
    return _quote(gw, model, 1, slo, arrival)


class RefusalTimes:
    """Server-side latency of the refusals, per stage (`WHERE`) and over all: from the
    request's headers parsed, and from its first byte, to the 503 handed to the transport
    (milliseconds; the last `keep` of each). `clock`: the same monotonic clock as the
    scope's stamps. The wall time includes any time this process was not running (on a
    loaded machine, preemption by other processes); `cpu_ms` is the refusal decision's own
    CPU time at the headers (`record_cpu`)."""

    def __init__(self, keep: int = 65536, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.keep = keep
        self.reset()

    def reset(self) -> None:
        self.counts = dict.fromkeys(WHERE, 0)
        self.samples: dict[str, tuple[deque[float], deque[float]]] = {
            w: (deque(maxlen=self.keep), deque(maxlen=self.keep)) for w in WHERE
        }
        self.cpu: deque[float] = deque(maxlen=self.keep)

    def record(self, where: str, t_headers: float | None, t_first: float | None) -> None:
        self.counts[where] += 1
        now = self.clock()
        hs, fs = self.samples[where]
        if t_headers is not None:
            hs.append((now - t_headers) * 1e3)
        if t_first is not None:
            fs.append((now - t_first) * 1e3)

    def record_cpu(self, seconds: float) -> None:
        self.cpu.append(seconds * 1e3)

    def summary(self) -> dict[str, Any]:
        """Counts per stage; p50/p99/max of both latencies per stage and over all, and of
        the decision CPU (None without samples)."""

        def q(*parts: Iterable[float]) -> dict[str, float | None]:
            s = sorted(x for p in parts for x in p)
            if not s:
                return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
            return {
                "n": len(s),
                "p50_ms": round(s[len(s) // 2], 3),
                "p99_ms": round(s[min(len(s) - 1, int(0.99 * len(s)))], 3),
                "max_ms": round(s[-1], 3),
            }

        out: dict[str, Any] = {
            "counts": dict(self.counts),
            "from_headers": q(*(self.samples[w][0] for w in WHERE)),
            "from_first_byte": q(*(self.samples[w][1] for w in WHERE)),
            "decision_cpu_at_headers": q(self.cpu),
        }
        for w in WHERE:
            out[w] = {
                "from_headers": q(self.samples[w][0]),
                "from_first_byte": q(self.samples[w][1]),
            }
        return out


__all__ = [
    "WHERE",
    "RefusalTimes",
    "early_refusal",
    "headers_refusal",
    "headers_priced",
    "row_bytes",
    "rows_at_least",
    "slo_hint",
]
