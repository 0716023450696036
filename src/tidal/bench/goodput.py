"""`tidal bench goodput`: SLO goodput of Tidal and its serving peers under open-loop load.

The figure of merit for an SLO-aware server: answers within the SLO per second.

One invocation, same machine, one server at a time in rotated order:
1. Tidal is started and its closed-loop capacity C measured (`connections` clients, each
   sending its next request when the previous answer arrives; 200s per second). `--capacity`
   skips this.
2. Each server (Tidal, Triton, MLServer, Ray Serve; see `tidal.bench.peers`) is started, warmed
   up, its own closed-loop capacity measured (reported), then driven open loop with Poisson
   arrivals at `levels` x C (default 0.5, 0.9, 1.2, 2). Every server gets the same seeded
   arrival schedule at each level and the same request bytes.
3. No coordinated omission: a request's latency is counted from its *scheduled* send time
   (dispatch lag + time on the wire + server), by `tidal.workload.loadgen.LoadGenerator`,
   which opens a new connection instead of waiting for a busy one.

The SLO (default 200 ms) travels in every request as Tidal's `slo_ms` and as Triton's
per-request `timeout` (us, enforced by its dynamic batcher's REJECT queue policy), and in
the `x-tidal-slo-ms` header (every server gets the same body bytes and headers; only Tidal
reads this one: it can refuse from the headers, before an 887 KB body is read). The header
carries what is left of the SLO when the request is sent (the SLO less the load generator's
lag behind the schedule: deadline propagation, as a gRPC client sends its remaining timeout),
so a server that reads it is judged against the same deadline as the client; Ray Serve
gets it as the proxy's `request_timeout_s`; MLServer has no per-request timeout.

Outcomes per request: good (200 within the SLO from the scheduled send), late (200 after it,
or no answer within the client timeout, 10 x SLO), refused (503/429), expired (504, 408, or an
error whose text says timeout/expired), error (anything else). Per server and level: goodput =
good / schedule duration, p50/p99 of the good answers, and the counts. After each level the
server is drained (probe requests until one answers within the SLO) so a backlog does not leak
into the next level.

Nothing here is asserted by tests: figures only. The load average is printed at start and end.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tidal.bench.peers import (
    LAUNCHERS,
    SERVERS,
    ModelSpec,
    PeerUnavailable,
    Running,
    install_peer,
)
from tidal.core.errors import TidalError

Echo = Callable[[str], Any]
LEVELS = (0.5, 0.9, 1.2, 2.0)
_JSON_HDR = {"content-type": "application/json"}


def model_spec(name: str, slo_ms: float, threads: int, max_batch: int) -> ModelSpec:
    """The ONNX file and shapes of catalog variant `name` (exported on first use)."""
    # bench may import models; local import keeps torch (the exporter) out of CLI start-up.
    from tidal.models.catalog import get_variant
    from tidal.models.onnx_cache import onnx_path

    spec = get_variant(name)
    path = onnx_path(name)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out_shape = tuple(int(d) for d in sess.get_outputs()[0].shape[1:])
    return ModelSpec(
        name=name,
        onnx=path,
        input_shape=tuple(spec.input_shape),
        output_shape=out_shape,
        threads=threads,
        max_batch=max_batch,
        slo_ms=slo_ms,
    )


def request_body(m: ModelSpec, slo_ms: float, seed: int = 0) -> bytes:
    """One OIP v2 JSON request (one row, values rounded to 3 decimals), identical for every
    server: `parameters` carries Tidal's `slo_ms` and Triton's `timeout` (us), both integers."""
    # float64 before rounding, so the JSON text is "0.637", not float32's "0.6370000243186951".
    x = np.round(np.random.default_rng(seed).random(m.input_shape), 3)
    body = {
        "inputs": [
            {
                "name": "input-0",
                "shape": [1, *m.input_shape],
                "datatype": "FP32",
                "data": x.reshape(-1).tolist(),
            }
        ],
        "parameters": {"slo_ms": int(slo_ms), "timeout": int(slo_ms * 1000)},
    }
    return orjson.dumps(body)


def poisson_offsets(rate: float, duration_s: float, seed: int) -> tuple[float, ...]:
    """Arrival offsets (s) of a Poisson process at `rate`/s over [0, duration_s)."""
    rng = np.random.default_rng(seed)
    n_max = int(rate * duration_s * 2 + 50)
    t = np.cumsum(rng.exponential(1.0 / rate, size=n_max))
    return tuple(float(v) for v in t[t < duration_s])


def classify(status: int, error: str, latency_ms: float, slo_ms: float) -> str:
    """good / late / refused / expired / error for one answer (see the module docstring)."""
    if status == 200:
        return "good" if latency_ms <= slo_ms else "late"
    low = error.lower()
    if status in (503, 429) and "timeout" not in low and "expired" not in low:
        return "refused"
    if status in (504, 408) or (status and ("timeout" in low or "expired" in low)):
        return "expired"
    if status == 0 and ("timeout" in low or "cancelled" in low):
        return "late"  # no answer within the client timeout: not in time
    return "error"


def summarize(outcomes: list[Any], slo_ms: float, duration_s: float) -> dict[str, Any]:
    """Goodput and counts from LoadGenerator outcomes, latency from the scheduled send."""
    counts = {k: 0 for k in ("good", "late", "refused", "expired", "error")}
    good: list[float] = []
    client_timeouts = 0
    errors: dict[str, int] = {}
    for o in outcomes:
        if math.isnan(o.sent_s) or math.isnan(o.latency_ms):
            lat = math.inf
        else:
            lat = (o.sent_s - o.scheduled_s) * 1000.0 + o.latency_ms
        k = classify(o.status, o.error, lat, slo_ms)
        counts[k] += 1
        if k == "good":
            good.append(lat)
        if o.status == 0:
            client_timeouts += 1
        if k == "error":
            key = f"{o.status}: {o.error[:80]}"
            errors[key] = errors.get(key, 0) + 1
    ok = counts["good"] + counts["late"] - client_timeouts
    arr = np.array(good)
    return {
        "sent": len(outcomes),
        "goodput": round(counts["good"] / duration_s, 2),
        "p50_ms": round(float(np.percentile(arr, 50)), 1) if arr.size else None,
        "p99_ms": round(float(np.percentile(arr, 99)), 1) if arr.size else None,
        **counts,
        "client_timeouts": client_timeouts,
        "in_slo_of_200s": round(counts["good"] / ok, 4) if ok > 0 else None,
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:3]),
    }


async def closed_loop(url: str, body: bytes, connections: int, duration_s: float) -> float:
    """200s per second with `connections` clients in a closed loop for `duration_s`."""
    import aiohttp

    done = 0
    t_end = time.monotonic() + duration_s
    timeout = aiohttp.ClientTimeout(total=60)

    async def client(s: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.monotonic() < t_end:
            try:
                async with s.post(url, data=body, headers=_JSON_HDR) as r:
                    await r.read()
                    if r.status == 200 and time.monotonic() <= t_end:
                        done += 1
            except (aiohttp.ClientError, TimeoutError, OSError):
                await asyncio.sleep(0.05)

    conn = aiohttp.TCPConnector(limit=connections)
    t0 = time.monotonic()
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
        await asyncio.gather(*(client(s) for _ in range(connections)))
    return done / max(1e-9, min(time.monotonic(), t_end) - t0)


async def drain(url: str, body: bytes, slo_ms: float, limit_s: float = 90.0) -> float:
    """Probe until one request answers within the SLO (the backlog is gone); seconds taken."""
    import aiohttp

    t0 = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=max(5.0, slo_ms / 100))
    async with aiohttp.ClientSession(timeout=timeout) as s:
        while time.monotonic() - t0 < limit_s:
            t = time.monotonic()
            try:
                async with s.post(url, data=body, headers=_JSON_HDR) as r:
                    await r.read()
                    if r.status == 200 and (time.monotonic() - t) * 1000 <= slo_ms:
                        return time.monotonic() - t0
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            await asyncio.sleep(0.2)
    return time.monotonic() - t0


async def open_loop(
    url: str, body: bytes, rate: float, duration_s: float, slo_ms: float, seed: int
) -> dict[str, Any]:
    """One level: Poisson arrivals at `rate`, summarized (see `summarize`)."""
    from tidal.workload.loadgen import LoadGenerator, Schedule

    offsets = poisson_offsets(rate, duration_s, seed)
    gen = LoadGenerator(url, body, max_in_flight=4000, timeout_s=max(2.0, 10 * slo_ms / 1000),
                        propagate_budget=True)  # fmt: skip
    outcomes, rep = await gen.run(Schedule(offsets, (slo_ms,) * len(offsets)))
    out = summarize(outcomes, slo_ms, duration_s)
    out["offered_rps"] = round(len(offsets) / duration_s, 2)
    out["max_dispatch_lag_ms"] = round(rep.max_lag_ms, 1)
    out["client_kept_up"] = rep.kept_up
    return out


def _run_server(
    name: str,
    m: ModelSpec,
    tmp: Path,
    fn: Callable[[Running, bytes], dict[str, Any]],
    body: bytes,
) -> dict[str, Any]:
    from tidal.bench.peers import _free_port

    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))
    launch = LAUNCHERS[name](m, _free_port(), workdir)
    srv = Running(launch)
    try:
        ready_s = srv.wait_ready(body, _JSON_HDR)
        out = fn(srv, body)
        out["startup_s"] = round(ready_s, 1)
        return out
    finally:
        srv.stop()


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def run_goodput(
    model: str = "resnet18",
    slo_ms: float = 200.0,
    levels: tuple[float, ...] = LEVELS,
    duration_s: float = 15.0,
    servers: tuple[str, ...] = SERVERS,
    rotate: int | None = None,
    capacity: float | None = None,
    connections: int = 16,
    threads: int = 2,
    max_batch: int = 8,
    seed: int = 1,
    install: bool = False,
    echo: Echo = print,
) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); return every figure as a dict."""
    for s in servers:
        if s not in LAUNCHERS:
            raise TidalError(f"unknown server {s!r}; servers: {', '.join(SERVERS)}")
    # SIGTERM (and SIGINT, ignored in background jobs) unwind through the finally blocks, so
    # the server being measured is stopped, not orphaned.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    load0 = os.getloadavg()
    echo(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} (2 cores shared)")
    if install:
        for s in servers:
            if s != "tidal":
                install_peer(s, echo)
    m = model_spec(model, slo_ms, threads, max_batch)
    slo_body = request_body(m, slo_ms)
    # Capacity and drain probes: the same tensor with a loose SLO (no refusal, no timeout).
    loose = request_body(m, 30_000.0)
    res: dict[str, Any] = {"settings": {}, "servers": {}, "skipped": {}}
    k = rotate if rotate is not None else int(time.time() // 60) % max(1, len(servers))
    order = list(servers[k:] + servers[:k])
    with tempfile.TemporaryDirectory(prefix="tidal-goodput-") as d:
        tmp = Path(d)
        if capacity is None:
            echo(f"[capacity] tidal closed loop, {connections} connections ...")

            def cap(srv: Running, _b: bytes) -> dict[str, Any]:
                url = srv.launch.url
                asyncio.run(closed_loop(url, loose, connections, 3.0))
                return {"rps": asyncio.run(closed_loop(url, loose, connections, duration_s))}

            capacity = float(_run_server("tidal", m, tmp, cap, loose)["rps"])
            echo(f"[capacity] {capacity:.1f} req/s")
        if capacity <= 0:
            raise TidalError("capacity measured 0 req/s: Tidal served nothing")
        res["settings"] = {
            "model": model,
            "slo_ms": slo_ms,
            "capacity_rps": round(capacity, 2),
            "levels": list(levels),
            "duration_s": duration_s,
            "connections": connections,
            "threads": threads,
            "max_batch": max_batch,
            "order": order,
            "seed": seed,
            "payload": f"OIP v2 JSON, 1 x {list(m.input_shape)} FP32 ({len(slo_body)} bytes)",
        }
        for name in order:
            echo(f"[{name}] starting ...")

            def levels_fn(srv: Running, _b: bytes, name: str = name) -> dict[str, Any]:
                url = srv.launch.url
                asyncio.run(closed_loop(url, loose, connections, 3.0))  # warm-up
                own = asyncio.run(closed_loop(url, loose, connections, min(duration_s, 10.0)))
                echo(f"[{name}] closed-loop capacity {own:.1f} req/s")
                per: dict[str, Any] = {"closed_loop_rps": round(own, 2), "levels": {}}
                for i, lv in enumerate(levels):
                    asyncio.run(drain(url, loose, slo_ms))
                    r = asyncio.run(
                        open_loop(url, slo_body, lv * capacity, duration_s, slo_ms, seed + i)
                    )
                    per["levels"][str(lv)] = r
                    echo(
                        f"[{name}] {lv:g}x ({r['offered_rps']:.1f}/s): goodput {r['goodput']:.1f}"
                        f"/s p50 {r['p50_ms']} p99 {r['p99_ms']} ms good {r['good']} late "
                        f"{r['late']} refused {r['refused']} expired {r['expired']} error "
                        f"{r['error']} (client lag max {r['max_dispatch_lag_ms']} ms)"
                    )
                return per

            try:
                res["servers"][name] = _run_server(name, m, tmp, levels_fn, loose)
            except PeerUnavailable as e:
                res["skipped"][name] = str(e)
                echo(f"[{name}] skipped: {e}")
    load1 = os.getloadavg()
    echo(f"load average at end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    res["settings"]["loadavg_start"] = [round(v, 2) for v in load0]
    res["settings"]["loadavg_end"] = [round(v, 2) for v in load1]
    res["verdict"] = verdict(res)
    return res


def verdict(res: dict[str, Any]) -> dict[str, Any]:
    """The issue's done-when checks, computed from the figures of this run."""
    t = res["servers"].get("tidal", {}).get("levels", {})
    out: dict[str, Any] = {}
    if "2.0" in t and "0.9" in t and t["0.9"]["goodput"] > 0:
        out["tidal_2x_over_0.9x"] = round(t["2.0"]["goodput"] / t["0.9"]["goodput"], 3)
        out["tidal_2x_in_slo_of_200s"] = t["2.0"]["in_slo_of_200s"]
        out["tidal_2x_ok"] = bool(
            out["tidal_2x_over_0.9x"] >= 0.9 and (t["2.0"]["in_slo_of_200s"] or 0) >= 0.99
        )
    ahead: dict[str, bool] = {}
    for lv, r in t.items():
        peers = [
            (n, s["levels"][lv]["goodput"])
            for n, s in res["servers"].items()
            if n != "tidal" and lv in s.get("levels", {})
        ]
        ahead[lv] = all(r["goodput"] >= g for _, g in peers)
        out[f"best_peer_at_{lv}x"] = max(peers, key=lambda p: p[1]) if peers else None
    out["tidal_ahead_at_every_level"] = bool(ahead) and all(ahead.values())
    out["tidal_ahead"] = ahead
    return out


def plot(res: dict[str, Any], path: str | Path) -> Path:
    """Goodput vs offered load (x capacity), one line per server, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = res["settings"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    cap = st["capacity_rps"]
    xs = np.array(st["levels"])
    ax.plot(xs, xs * cap, ":", color="grey", label="offered load")
    colors = {"tidal": "tab:green", "triton": "tab:red", "mlserver": "tab:blue",
              "ray_serve": "tab:orange"}  # fmt: skip
    for name in sorted(res["servers"], key=lambda n: n != "tidal"):  # Tidal first, on top
        s = res["servers"][name]
        lv = [float(k) for k in s["levels"]]
        ys = [s["levels"][k]["goodput"] for k in s["levels"]]
        ax.plot(
            lv, ys, "o-", label=name, color=colors.get(name), zorder=3 if name == "tidal" else 2
        )
    ax.set_xlabel(f"offered load (x closed-loop capacity of Tidal, {cap:.1f} req/s)")
    ax.set_ylabel(f"goodput: answers within {st['slo_ms']:g} ms per s")
    la0, la1 = st["loadavg_start"][0], st["loadavg_end"][0]
    ax.set_title(
        f"{st['model']}, SLO {st['slo_ms']:g} ms, max batch {st['max_batch']}, "
        f"{st['threads']} threads; load avg {la0:.1f} -> {la1:.1f}",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    plt.close(fig)
    return p


def table(res: dict[str, Any]) -> str:
    """A Markdown table of the run (server x level)."""
    rows = [
        "| server | load | offered/s | goodput/s | p50 ms | p99 ms | good | late | refused "
        "| expired | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in res["servers"].items():
        for lv, r in s["levels"].items():
            rows.append(
                f"| {name} | {lv}x | {r['offered_rps']} | {r['goodput']} | {r['p50_ms']} | "
                f"{r['p99_ms']} | {r['good']} | {r['late']} | {r['refused']} | {r['expired']} "
                f"| {r['error']} |"
            )
    return "\n".join(rows)


__all__ = ["LEVELS", "classify", "plot", "run_goodput", "summarize", "table", "verdict"]
