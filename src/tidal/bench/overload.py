"""`tidal bench overload`: outcome counts at 2x and 10x overload, a client-abandon run with an
RSS check, and the SIGSTOP detection time. Figures, not assertions.

One run, one gateway process (`tidal serve`, digits-cnn by default: its cost is linear in rows,
so a 1024-row request is really 1024 times a 1-row one), checked answers (each output compared
with the model run locally on the same rows, by request id):

1. capacity: a closed loop of 1024-row requests with a loose SLO measures the lane's rows/s;
2. overload: open-loop Poisson arrivals at 2x (slo 100 ms) and 10x (slo 2000 ms) of that
   capacity in rows, half of the requests 1 row and half 1024 rows, `duration` s each; the
   SLO travels in the body's `slo_ms` and (`slo_in="both"`, the default) in the
   `x-tidal-slo-ms` header, so the gateway may refuse at the headers. Printed per level: the
   outcome counts, the share of the requests not served in time that were refused at arrival
   (goal >= 95%), the p99 gateway refusal latency (goal <= 5 ms) measured both server-side
   (`/admin/refusals`: request headers parsed -> 503 handed to the socket, and from the
   request's first byte) and client-side (from the scheduled send, and from the actual send:
   on this 2-core machine the load generator shares the cores, so its own queueing is in the
   client-side figures), where the refusals were decided (headers / body / admission),
   expired 504s over all requests (goal <= 2%), and the share of 200s within their deadline
   (goal >= 99%);
3. abandon: 40 req/s of 1024-row requests for 15 s whose clients hang up after 50 ms; then
   what is still queued or running (goal 0) and the gateway's RSS before / after (goal within
   10%); run twice, to tell a plateau from a leak;
4. sigstop: 2 replicas under a steady load; one worker gets SIGSTOP; the time until the
   watchdog killed it, the time until its replacement was ready, and the slowest answer.

The load average is printed at the start and the end: this machine is shared.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tidal.bench.checked_load import (
    Req,
    binary_request,
    describe,
    read_response,
    run_open_loop,
)
from tidal.bench.gateway_proc import GatewayProcess

Echo = Callable[[str], None]
FEATURES = 64
BIG = 1024


class ModelOracle:
    """Expected outputs of a small pool of inputs, computed locally with ONNX Runtime on the
    same ONNX file the gateway serves (identity for noop)."""

    def __init__(self, variant: str, seed: int = 0, pool: int = 16) -> None:
        rng = np.random.default_rng(seed)
        self.small = [rng.random((1, FEATURES), dtype=np.float32) for _ in range(4 * pool)]
        self.big = [rng.random((BIG, FEATURES), dtype=np.float32) for _ in range(pool)]
        self._want: dict[int, np.ndarray] = {}
        run = _runner(variant)
        for x in self.small + self.big:
            self._want[id(x)] = run(x)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._want[id(x)]

    def requests(
        self, n: int, rate: float, slo_ms: float, p_big: float, seed: int, prefix: str
    ) -> list[Req]:
        """`n` Poisson arrivals at `rate`/s, each 1024 rows with probability `p_big`."""
        rng = np.random.default_rng(seed)
        gaps = rng.exponential(1.0 / rate, n)
        at = np.cumsum(gaps) - gaps[0]
        out = []
        for i in range(n):
            big = rng.random() < p_big
            pool = self.big if big else self.small
            out.append(
                Req(f"{prefix}{i}", pool[int(rng.integers(len(pool)))], slo_ms, float(at[i]))
            )
        return out


def _runner(variant: str) -> Callable[[np.ndarray], np.ndarray]:
    if variant == "noop":
        return lambda x: x
    import onnxruntime as ort  # heavy: only when a real model is measured

    from tidal.models.onnx_cache import onnx_path

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path(variant)), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        y = sess.run(None, {name: x})[0]
        return np.asarray(y, dtype=np.float32)

    return run


def gateway_config(
    variant: str, replicas: int, cores: float, batch: int, margin: float = 1.0
) -> dict[str, Any]:
    return {
        "models": [{"name": "m", "variants": [variant]}],
        "default_slo_ms": 1000,
        "admission_margin": margin,
        "plan": {
            "stages": [
                {
                    "stage": "m",
                    "variants": [{"name": variant}],
                    "replicas": replicas,
                    "cores": cores,
                    "batch": batch,
                }
            ]
        },
    }


async def closed_loop_rows_per_s(
    port: int, oracle: ModelOracle, seconds: float, clients: int = 4
) -> float:
    """Rows per second the gateway serves to `clients` back-to-back 1024-row clients."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        i = 0
        while time.perf_counter() < stop_at:
            x = oracle.big[(k + i) % len(oracle.big)]
            writer.write(binary_request("127.0.0.1", "m", Req(f"cap{k}-{i}", x, 60_000)))
            status, _h, _b = await read_response(reader)
            if status == 200:
                done += BIG
            i += 1
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return done / (time.perf_counter() - t0)


def verdicts(d: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals for one overload level, from `describe()` counts."""
    total = d["total"]
    answered_200 = d["ok"] + d["late"]
    not_in_time = total - d["ok"]
    refused_share = d["refused"] / not_in_time if not_in_time else 1.0
    return {
        "refused_share_of_not_in_time": round(refused_share, 4),
        "goal_refused_share_ge_0.95": refused_share >= 0.95,
        "refusal_p99_ms": d["refused_p99_ms"],
        "refusal_p99_from_send_ms": d.get("refused_p99_from_send_ms"),
        "goal_refusal_p99_le_5ms_client": d["refused_p99_ms"] is None or d["refused_p99_ms"] <= 5.0,
        "expired_share": round(d["expired"] / total, 4) if total else 0.0,
        "goal_expired_le_0.02": (d["expired"] / total if total else 0.0) <= 0.02,
        "in_deadline_share_of_200": round(d["ok"] / answered_200, 4) if answered_200 else None,
        "goal_200_in_deadline_ge_0.99": answered_200 == 0 or d["ok"] / answered_200 >= 0.99,
    }


def run_overload(
    variant: str = "digits-cnn",
    cores: float = 1.0,
    batch: int = 8,
    duration: float = 20.0,
    levels: tuple[float, ...] = (2.0, 10.0),
    slos_ms: tuple[float, ...] = (100.0, 2000.0),
    abandon: bool = True,
    sigstop: bool = True,
    margin: float = 1.0,
    slo_in: str = "both",
    echo: Echo | None = print,
) -> dict[str, Any]:
    """Run the phases of the module docstring; returns the figures (also echoed).
    `margin`: the gateway's admission_margin (1.0 = the default config); `slo_in`: "both"
    (body and header) or "body" (the body's `slo_ms` only)."""
    if slo_in not in ("both", "body"):
        raise ValueError(f"slo_in must be 'both' or 'body', got {slo_in!r}")
    say = echo or (lambda s: None)
    out: dict[str, Any] = {
        "load_avg_start": os.getloadavg(),
        "variant": variant,
        "admission_margin": margin,
        "slo_in": slo_in,
    }
    say(f"load average at start: {out['load_avg_start']}")
    oracle = ModelOracle(variant)
    work = Path(tempfile.mkdtemp(prefix="tidal-overload-"))
    with GatewayProcess(gateway_config(variant, 1, cores, batch, margin), work) as gw:
        cap = asyncio.run(closed_loop_rows_per_s(gw.port, oracle, 4.0))
        out["capacity_rows_per_s"] = round(cap, 1)
        say(f"capacity: {cap:.0f} rows/s ({variant}, 1 replica x {cores:g} cores, batch {batch})")
        mean_rows = 0.5 * 1 + 0.5 * BIG
        for level, slo in zip(levels, slos_ms, strict=True):
            rate = level * cap / mean_rows
            n = int(rate * duration)
            reqs = oracle.requests(n, rate, slo, 0.5, seed=int(level), prefix=f"x{level:g}-")
            before = gw.stats()["m"]
            gw.refusals(reset=True)
            summ = asyncio.run(
                run_open_loop(
                    "127.0.0.1",
                    gw.port,
                    "m",
                    reqs,
                    oracle,
                    timeout_s=slo / 1e3 + 30,
                    slo_header=slo_in == "both",
                )  # fmt: skip
            )
            after = gw.wait_idle()["m"]
            d = describe(summ)
            d.update(verdicts(d))
            srv = gw.refusals()
            d["server_refusal"] = srv
            p99 = srv["from_headers"]["p99_ms"]
            d["goal_refusal_p99_le_5ms_server"] = p99 is None or p99 <= 5.0
            d["offered_req_per_s"] = round(rate, 1)
            d["slo_ms"] = slo
            d["server_refused"] = after["violations"]["refused"] - before["violations"]["refused"]
            d["server_expired"] = after["violations"]["expired"] - before["violations"]["expired"]
            # the server's own count of answers after their deadline (the client's `late`
            # also counts time spent in the client's and the gateway's socket queues)
            d["server_late"] = after["violations"]["late"] - before["violations"]["late"]
            out[f"overload_{level:g}x"] = d
            say(f"{level:g}x overload ({rate:.1f} req/s, slo {slo:g} ms, {n} requests): {d}")
        if abandon:
            out["abandon"] = _abandon(gw, oracle, say)
            # A second identical run tells a plateau (allocator keeping freed pages) from a
            # leak (growing again).
            out["abandon_again"] = _abandon(gw, oracle, say)
    if sigstop:
        with GatewayProcess(gateway_config(variant, 2, min(cores, 0.5), batch), work) as gw2:
            out["sigstop"] = _sigstop(gw2, oracle, say)
    out["load_avg_end"] = os.getloadavg()
    say(f"load average at end: {out['load_avg_end']}")
    return out


def _abandon(gw: GatewayProcess, oracle: ModelOracle, say: Echo) -> dict[str, Any]:
    time.sleep(1.0)
    rss0 = gw.rss_mb()
    reqs = [
        Req(f"ab{i}", oracle.big[i % len(oracle.big)], 30_000, i / 40.0, abandon_after_s=0.05)
        for i in range(600)
    ]
    before = gw.stats()["m"]
    summ = asyncio.run(run_open_loop("127.0.0.1", gw.port, "m", reqs, oracle))
    t_end = time.monotonic()
    after = gw.wait_idle(timeout_s=30)["m"]
    idle_after_s = time.monotonic() - t_end
    time.sleep(2.0)
    rss1 = gw.rss_mb()
    d = describe(summ)
    res = {
        "counts": d,
        "queued_after": after["queue_len"],
        "in_flight_after": after["in_flight"],
        "cancelled": after.get("cancelled", 0) - before.get("cancelled", 0),
        "idle_after_s": round(idle_after_s, 2),
        "rss_before_mb": round(rss0, 1),
        "rss_after_mb": round(rss1, 1),
        "rss_ratio": round(rss1 / rss0, 3),
        "goal_nothing_left": after["queue_len"] == 0 and after["in_flight"] == 0,
        "goal_rss_within_10pct": abs(rss1 / rss0 - 1) <= 0.10,
    }
    say(f"abandon run (40 req/s x 1024 rows, 15 s, clients hang up after 50 ms): {res}")
    return res


def _sigstop(gw: GatewayProcess, oracle: ModelOracle, say: Echo) -> dict[str, Any]:
    victim = gw.worker_pids()[0]
    base_kills = gw.stats()["m"].get("watchdog_kills", 0)
    reqs = [Req(f"st{i}", oracle.small[i % len(oracle.small)], 5000, i / 100.0) for i in range(800)]
    marks: dict[str, float] = {}

    async def main() -> Any:
        async def fault() -> None:
            await asyncio.sleep(2.0)
            marks["stop"] = time.monotonic()
            os.kill(victim, signal.SIGSTOP)
            while time.monotonic() - marks["stop"] < 30:
                s = await asyncio.to_thread(gw.stats)
                if "killed" not in marks and s["m"].get("watchdog_kills", 0) > base_kills:
                    marks["killed"] = time.monotonic()
                if "killed" in marks and s["m"]["replicas"] == 2 and s["m"]["starting"] == 0:
                    marks["replaced"] = time.monotonic()
                    return
                await asyncio.sleep(0.02)

        res, _ = await asyncio.gather(
            run_open_loop("127.0.0.1", gw.port, "m", reqs, oracle), fault()
        )
        return res

    summ = asyncio.run(main())
    with_sig = [r for r in summ.results if r.latency_ms > 0]
    worst = max((r.latency_ms for r in with_sig), default=0.0)
    stop = marks.get("stop", 0.0)
    res = {
        "counts": describe(summ),
        "detected_s": round(marks["killed"] - stop, 3) if "killed" in marks else None,
        "replaced_s": round(marks["replaced"] - stop, 3) if "replaced" in marks else None,
        "slowest_answer_ms": round(worst, 1),
    }
    say(f"SIGSTOP of one of 2 workers under load: {res}")
    return res


__all__ = ["ModelOracle", "closed_loop_rows_per_s", "run_overload", "verdicts"]
