"""An open-loop HTTP client that checks every answer, for the fault suite and the overload and
soak benchmarks.

Why not `tidal.workload.loadgen` (aiohttp): that generator sends one body to measure a server;
this one gives every request its own rows and id and checks the answer against them, and it
needs socket-level control that aiohttp does not give: abandoning a request (closing the
socket mid-wait), pipelining several requests on one connection, and exact accounting of a
connection that dies without an answer (`lost`).

Contract of :func:`run_open_loop`:
- request i leaves at ``start + send_at`` whatever happened to the others (open loop), over a
  pool of keep-alive connections (a new one is opened when none is idle, up to `max_conns`);
  its latency is measured from the scheduled send time (no coordinated omission), and the
  SLO it carries is what is left of its budget when it is written (``slo_ms`` minus the
  client's lag behind the schedule, at least 1 us: deadline propagation, as a gRPC client
  sends its remaining timeout), so the server is judged against the deadline the client
  holds it to;
- inputs travel in the binary tensor extension (cheap to build at 1024 rows);
- every request ends with exactly one :class:`Result` whose `outcome` is one of
  ``ok`` (200, the id and the output match, within the deadline), ``late`` (200 and correct,
  after the deadline), ``wrong`` (200 with a wrong id or output: must never happen),
  ``refused`` (503), ``expired`` (504), ``error`` (any other status), ``lost`` (the
  connection closed or timed out without an answer), ``abandoned`` (the client closed the
  socket after `abandon_after_s`, on purpose).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

OUTCOMES = ("ok", "late", "wrong", "refused", "expired", "error", "lost", "abandoned")
Expect = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Req:
    """One request: its id, rows `x` (n x features, float32), SLO, and when it leaves."""

    rid: str
    x: np.ndarray
    slo_ms: float
    send_at: float = 0.0
    abandon_after_s: float | None = None


@dataclass
class Result:
    """What happened to one request (see the module docstring for `outcome`)."""

    rid: str
    rows: int
    outcome: str
    status: int = 0
    latency_ms: float = 0.0
    sent_lag_ms: float = 0.0
    connect_ms: float | None = None  # when a new connection was opened for it
    cause: str = ""
    reason: str = ""
    retry_after: str | None = None


@dataclass
class Summary:
    """Counts of outcomes, the refusal latencies, and the results themselves."""

    results: list[Result]
    counts: Counter[str] = field(default_factory=Counter)
    loop_lag_ms: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.counts = Counter(r.outcome for r in self.results)

    def latencies(self, outcome: str) -> list[float]:
        return sorted(r.latency_ms for r in self.results if r.outcome == outcome)

    def quantile(self, outcome: str, q: float) -> float | None:
        lat = self.latencies(outcome)
        if not lat:
            return None
        return float(lat[min(len(lat) - 1, int(q * len(lat)))])


def identity(x: np.ndarray) -> np.ndarray:
    """The noop model's answer."""
    return x


def binary_request(
    host: str, model: str, req: Req, *, close: bool = False, extra_headers: str = ""
) -> bytes:
    """The raw HTTP/1.1 bytes of one OIP v2 infer request (binary tensor extension)."""
    data = np.ascontiguousarray(req.x, dtype=np.float32).tobytes()
    header = orjson.dumps(
        {
            "id": req.rid,
            "inputs": [
                {
                    "name": "input-0",
                    "shape": list(req.x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "parameters": {"slo_ms": req.slo_ms},
        }
    )
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\n"
        f"Content-Length: {len(header) + len(data)}\r\n"
        f"{'Connection: close' + chr(13) + chr(10) if close else ''}{extra_headers}\r\n"
    ).encode()
    return head + header + data


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length or chunked). EOF -> asyncio.IncompleteReadError."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = await reader.read()
    return status, headers, body


def check_answer(req: Req, status: int, body: bytes, expect: Expect) -> tuple[str, str, str]:
    """(outcome before the deadline check, cause, reason) of one answer."""
    try:
        doc = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        return ("wrong" if status == 200 else "error"), "", f"unparsable body {body[:80]!r}"
    if status == 200:
        if doc.get("id") != req.rid:
            return "wrong", "", f"id {doc.get('id')!r} != {req.rid!r}"
        out = doc["outputs"][0]
        y = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
        want = expect(req.x)
        if y.shape != want.shape or not np.allclose(y, want, rtol=1e-4, atol=1e-4):
            return "wrong", "", f"output of {req.rid} does not match its input"
        return "ok", "", ""
    cause = str(doc.get("cause", "")) if isinstance(doc, dict) else ""
    reason = str(doc.get("error", "")) if isinstance(doc, dict) else ""
    if status == 503:
        return "refused", cause, reason
    if status == 504:
        return "expired", cause, reason
    return "error", cause, reason


class _Pool:
    """Idle keep-alive connections to one server."""

    def __init__(self, host: str, port: int, max_conns: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.sem = asyncio.Semaphore(max_conns)
        self.opened = 0

    async def get(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.idle:
            r, w = self.idle.pop()
            if not w.is_closing() and not r.at_eof():
                return r, w
            w.close()
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port, limit=1 << 24)

    def put(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.idle.append(conn)

    async def close(self) -> None:
        for _, w in self.idle:
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
        self.idle.clear()


async def _one(
    pool: _Pool, model: str, req: Req, t0: float, expect: Expect, timeout_s: float, hdr: bool
) -> Result:
    delay = t0 + req.send_at - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    scheduled = t0 + req.send_at
    res = Result(req.rid, int(req.x.shape[0]), "lost")
    async with pool.sem:
        res.sent_lag_ms = (time.perf_counter() - scheduled) * 1e3
        t_c = time.perf_counter()
        opened = pool.opened
        try:
            conn = await pool.get()
            if pool.opened != opened:
                res.connect_ms = (time.perf_counter() - t_c) * 1e3
        except OSError as e:
            res.reason = f"connect failed: {e}"
            return res
        reader, writer = conn
        reuse = False
        try:
            left = max(1e-3, req.slo_ms - (time.perf_counter() - scheduled) * 1e3)
            sent = dataclasses.replace(req, slo_ms=round(left, 3))
            extra = f"x-tidal-slo-ms: {sent.slo_ms:g}\r\n" if hdr else ""
            writer.write(binary_request(pool.host, model, sent, extra_headers=extra))
            wait = timeout_s if req.abandon_after_s is None else req.abandon_after_s
            try:
                status, headers, body = await asyncio.wait_for(read_response(reader), wait)
            except TimeoutError:
                res.outcome = "abandoned" if req.abandon_after_s is not None else "lost"
                res.reason = f"no answer after {wait:g} s"
                return res
            res.latency_ms = (time.perf_counter() - scheduled) * 1e3
            res.status = status
            res.retry_after = headers.get("retry-after")
            res.outcome, res.cause, res.reason = check_answer(req, status, body, expect)
            if res.outcome == "ok" and res.latency_ms > req.slo_ms:
                res.outcome = "late"
            reuse = headers.get("connection", "").lower() != "close"
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
            res.outcome, res.reason = "lost", f"connection failed: {e!r}"
        finally:
            if reuse:
                pool.put(conn)
            else:
                writer.close()
        return res


async def run_open_loop(
    host: str,
    port: int,
    model: str,
    reqs: Sequence[Req],
    expect: Expect = identity,
    *,
    max_conns: int = 512,
    timeout_s: float = 60.0,
    slo_header: bool = False,
) -> Summary:
    """Send `reqs` open loop (see the module docstring); one Result per request, in order.
    `slo_header`: send each request's SLO in the `x-tidal-slo-ms` header as well as in the
    body (the gateway can then refuse it from the headers, before the body is read)."""
    pool = _Pool(host, port, max_conns)
    t0 = time.perf_counter() + 0.05
    lags: list[float] = []
    ticker = asyncio.ensure_future(_loop_lag(lags))
    try:
        results = await asyncio.gather(
            *(_one(pool, model, r, t0, expect, timeout_s, slo_header) for r in reqs)
        )
    finally:
        ticker.cancel()
        await pool.close()
    return Summary(list(results), loop_lag_ms=lags)


async def _loop_lag(out: list[float], period_s: float = 0.005) -> None:
    """The client's own event-loop lag: how late a `period_s` sleep wakes up (ms), for as
    long as the run lasts. A saturated load generator answers late whatever the server."""
    while True:
        t = time.perf_counter()
        await asyncio.sleep(period_s)
        out.append((time.perf_counter() - t - period_s) * 1e3)


def make_requests(
    n: int,
    rate: float,
    rows: int | Sequence[int],
    slo_ms: float,
    *,
    seed: int = 0,
    prefix: str = "r",
    features: int = 64,
    poisson: bool = True,
    abandon_after_s: float | None = None,
) -> list[Req]:
    """`n` requests at `rate` per second (Poisson or evenly spaced), each with its own random
    rows (`rows`: one size, or a sequence cycled through) and a unique id."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, n) if poisson else np.full(n, 1.0 / rate)
    at = np.cumsum(gaps) - gaps[0]
    sizes = [rows] * n if isinstance(rows, int) else [rows[i % len(rows)] for i in range(n)]
    return [
        Req(
            f"{prefix}{i}",
            rng.random((sizes[i], features), dtype=np.float32),
            slo_ms,
            float(at[i]),
            abandon_after_s,
        )
        for i in range(n)
    ]


def describe(summary: Summary) -> dict[str, Any]:
    """Counts and latency quantiles as plain data (for printing or JSON)."""
    out: dict[str, Any] = {k: summary.counts.get(k, 0) for k in OUTCOMES}
    out["total"] = len(summary.results)
    lags = sorted(r.sent_lag_ms for r in summary.results)
    out["send_lag_p99_ms"] = round(lags[int(0.99 * (len(lags) - 1))], 2) if lags else None
    for k in ("ok", "refused"):
        p50, p99 = summary.quantile(k, 0.5), summary.quantile(k, 0.99)
        out[f"{k}_p50_ms"] = None if p50 is None else round(p50, 2)
        out[f"{k}_p99_ms"] = None if p99 is None else round(p99, 2)
    # The refusals timed from the moment the client sent them (the gateway's part, without
    # the client's own lag behind its schedule).
    sent = sorted(r.latency_ms - r.sent_lag_ms for r in summary.results if r.outcome == "refused")
    out["refused_p99_from_send_ms"] = (
        round(sent[min(len(sent) - 1, int(0.99 * len(sent)))], 2) if sent else None
    )
    # Where a client-side figure comes from: the load generator's own loop lag, and the
    # connections it had to open (connect + the server's accept) on the way.
    lag = sorted(summary.loop_lag_ms)
    out["client_loop_lag_p99_ms"] = round(lag[int(0.99 * (len(lag) - 1))], 2) if lag else None
    con = sorted(r.connect_ms for r in summary.results if r.connect_ms is not None)
    out["new_connections"] = len(con)
    out["connect_p99_ms"] = round(con[int(0.99 * (len(con) - 1))], 2) if con else None
    return out


__all__ = [
    "OUTCOMES",
    "Req",
    "Result",
    "Summary",
    "binary_request",
    "check_answer",
    "describe",
    "identity",
    "make_requests",
    "read_response",
    "run_open_loop",
]
