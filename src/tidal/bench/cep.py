"""`tidal cep bench`: throughput, latency, hot-update gap and loss checks per backend.

For each backend it runs (1) a saturating stream of N packed transactions through the
`forward` operator (events/s), (2) a stream paced at `rate` events/s (p50/p99 latency from
submit to result, stamped in the event's `ts`), and (3) a stream through the stateful
`card_count` operator with `state_cards` cards of keyed state (8 bytes each: 131072 = 1 MB)
during which the operator is hot-updated to a second version (update_ms, update_gap_ms).
Lost and duplicated events are counted from sequence numbers and a checksum over all runs,
and the per-card counts must read 1..n after the update (state carried, order kept).
`native` runs the same operator code in the host process without any transport. The
saturating run is repeated (`repeats`, default 3) and `events_per_s` is the median.
"""

from __future__ import annotations

import contextlib
import gc
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, cast

import numpy as np

from tidal.cep import operators, workload
from tidal.cep.client import OperatorClient
from tidal.cep.codec import Codec, Mode
from tidal.cep.manager import DeployDefaults, NodeManager
from tidal.cep.registry import VersionSpec
from tidal.cep.sdk.python.operator import load_operator
from tidal.cep.sockstore import SocketStoreServer
from tidal.cep.store import MemoryStore, open_store
from tidal.core.clock import Clock, MonotonicClock
from tidal.core.errors import TidalError


def _check(sent: np.ndarray, got: np.ndarray) -> tuple[int, int]:
    """(lost, duplicated) by sequence numbers; the checksum must agree when both are 0."""
    seqs = got["seq"]
    uniq = np.unique(seqs)
    dup = len(seqs) - len(uniq)
    lost = len(np.setdiff1d(sent["seq"], uniq, assume_unique=False))
    if (
        lost == 0
        and dup == 0
        and workload.checksum(sent) != workload.checksum(got[np.argsort(got["seq"])])
    ):
        lost = -1  # same sequence numbers but altered records: flag it
    return lost, dup


def _stream(
    cl: OperatorClient,
    arr: np.ndarray,
    clock: Clock,
    rate: float | None,
    window: int = 200_000,
    inbox: deque[tuple[float, Any]] | None = None,
) -> tuple[np.ndarray, float, list[float]]:
    """Send `arr` (paced at `rate` ev/s when given), collect all results; returns
    (results, seconds, latencies_ms). The `ts` field carries the submit time. With `inbox`
    (filled by the client's `sink` with (receive time, batch)) a result's latency ends when
    the host's receiver got it, not when this loop next looked (up to its 1 ms pacing step
    later); else at `poll()`."""
    chunk = 20_000 if rate is None else max(1, int(rate / 1000))  # 1 ms of events when paced
    got: list[Any] = []
    n_got = 0
    lat: list[np.ndarray] = []
    t0 = clock.now()
    i = 0
    while i < len(arr) or n_got < len(arr):
        if i < len(arr) and (i - n_got) < window:
            if rate is not None:
                due = t0 + i / rate
                now = clock.now()
                if now < due:
                    time.sleep(min(due - now, 0.001))
            part = arr[i : i + chunk].copy()
            part["ts"] = clock.now()
            cl.submit(part)
            i += len(part)
        else:
            time.sleep(0.0002)
        if inbox is not None:
            recv = [inbox.popleft() for _ in range(len(inbox))]
        else:
            recv = [(clock.now(), b0) for b0 in cl.poll()]
        for now, b0 in recv:
            b = cast(np.ndarray, b0)
            got.append(b)
            n_got += len(b)
            lat.append((now - b["ts"]) * 1e3)
        if clock.now() - t0 > 300:
            break
    dt = clock.now() - t0
    res = np.concatenate(got) if got else arr[:0]
    return res, dt, (np.concatenate(lat).tolist() if lat else [])


def _native(n: int, batch: int, clock: Clock) -> dict[str, Any]:
    op = load_operator(operators.path("forward"))
    arr = workload.transactions(n, seed=1)
    t0 = clock.now()
    outs: list[Any] = [op.process(arr[i : i + batch]) for i in range(0, n, batch)]
    dt = clock.now() - t0  # results kept as a list of batches, as the transports' poll() does
    res: np.ndarray = np.concatenate(outs)
    lost, dup = _check(arr, res)
    cc = load_operator(operators.path("card_count"))
    t1 = clock.now()
    for i in range(0, n, batch):
        cc.process(arr[i : i + batch])
    return {
        "backend": "native",
        "events_per_s": n / dt,
        "p50_ms": 0.0,
        "p99_ms": 0.0,
        "stateful_events_per_s": n / (clock.now() - t1),
        "update_gap_ms": None,
        "update_ms": None,
        "lost_events": lost,
        "duplicated_events": dup,
        "note": "the same operator code called in the host process on batches of B; no transport",
    }


@contextlib.contextmanager
def _backend(
    kind: str, root: str, mode: str, batch: int, pop: str = "commit"
) -> Iterator[NodeManager]:
    srv: Any = None
    rs: Any = None
    proc: subprocess.Popen[bytes] | None = None
    if kind == "embedded":
        srv = SocketStoreServer(MemoryStore("bench"), f"{root}/store.sock")
        url = srv.url
    elif kind == "embedded-proc":  # the store in its own process, as under `tidal cep serve`
        path = f"{root}/store.sock"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tidal.cep.sockstore", path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # "ready"
        url = f"unix://{path}"
    else:
        from tidal.cep.redis_server import RedisServer

        rs = RedisServer()
        url = rs.url
    m = NodeManager(root, url, DeployDefaults(codec="packed", mode=mode, batch=batch, pop=pop))
    try:
        yield m
    finally:
        m.close()
        if srv is not None:
            srv.close()
        if rs is not None:
            rs.stop()
        if proc is not None:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(10)
            assert proc.stdout is not None
            proc.stdout.close()


def run_backend(
    kind: str,
    mode: str,
    n: int,
    batch: int,
    rate: float,
    paced_n: int,
    state_cards: int,
    clock: Clock,
    updates: int = 5,
    repeats: int = 3,
    pop: str = "commit",
) -> dict[str, Any]:
    """All three measurements for one backend (see module docstring)."""
    with (
        tempfile.TemporaryDirectory(prefix="tidal-cep-bench-") as root,
        _backend(kind, root, mode, batch, pop) as m,
    ):
        m.register("forward", VersionSpec(source=operators.path("forward").read_text()))
        env = {"TIDAL_CEP_STATE_CARDS": str(state_cards)}
        src = operators.path("card_count").read_text()
        for _ in range(updates + 1):
            m.register("card_count", VersionSpec(source=src, env=env))

        inbox: deque[tuple[float, Any]] = deque()

        def client(op: str) -> OperatorClient:
            """A host client on `op`'s queues (starts the operator if needed); results go
            to `inbox` stamped with their receive time."""
            a = m.request(op)
            return OperatorClient(
                open_store(a["store"]),
                a["in"],
                a["out"],
                Codec("packed"),
                mode=cast(Mode, mode),
                batch=batch,
                clock=clock,
                sink=lambda b: inbox.append((clock.now(), b)),
            )

        cl = client("forward")
        arr = workload.transactions(n, seed=2)
        rates: list[float] = []
        lost = dup = 0
        for _ in range(repeats):  # this shared 2-core machine is noisy: report the median
            res, dt, _ = _stream(cl, arr, clock, None, inbox=inbox)
            rates.append(n / dt)
            lo, du = _check(arr, res)
            lost, dup = lost + lo, dup + du
        paced = workload.transactions(paced_n, seed=3)
        res2, _, lat = _stream(cl, paced, clock, rate, inbox=inbox)
        l2, d2 = _check(paced, res2)
        cl.close()
        # hot update with keyed state
        cl = client("card_count")
        # k hot updates (versions 2..k+1) while events flow at `update_rate` events/s
        update_rate = rate * 5
        upd = workload.transactions(
            int(update_rate * (1.5 * updates + 1)), seed=4, cards=state_cards
        )
        first = min(len(upd) // 10, 50_000)
        r1, _, _ = _stream(cl, upd[:first], clock, None, inbox=inbox)
        reports: list[dict[str, Any]] = []
        th = threading.Thread(target=_updates, args=(m, updates, reports, clock), daemon=True)
        th.start()
        r2, _, _ = _stream(cl, upd[first:], clock, update_rate, inbox=inbox)
        th.join(60)
        cl.close()
        both = np.concatenate([r1, r2])
        l3, d3 = _check(upd, both)
        order_ok = _counts_ok(both)
        gaps = [r["gap_ms"] for r in reports if r.get("gap_ms") is not None]
        ums = [r["update_ms"] for r in reports]
        return {
            "backend": f"{kind}-{mode}" + ("-cepless-pop" if pop == "pop" else ""),
            "events_per_s": float(np.median(rates)),
            "events_per_s_runs": [round(r) for r in rates],
            "p50_ms": float(np.percentile(lat, 50)) if lat else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat else None,
            "paced_events_per_s": rate,
            "update_gap_ms": float(np.median(gaps)) if gaps else None,
            "update_gap_max_ms": max(gaps) if gaps else None,
            "update_gaps_ms": [round(g, 2) for g in gaps],
            "update_gap_parts_ms": [r.get("parts") for r in reports],
            "update_ms": float(np.median(ums)) if ums else None,
            "update_start_ms": float(np.median([r["start_ms"] for r in reports]))
            if reports
            else None,
            "updates": len(reports),
            "state_bytes": state_cards * 8,
            "lost_events": lost + l2 + l3,
            "duplicated_events": dup + d2 + d3,
            "per_key_counts_ok": order_ok,
            "batch": batch,
        }


def _updates(m: NodeManager, k: int, out: list[dict[str, Any]], clock: Clock) -> None:
    """Hot-update card_count to versions 2..k+1; after each, wait for the new version's
    first output and record the gap (old's last output -> new's first output)."""
    for v in range(2, k + 2):
        rep = m.update("card_count", v)
        deadline = clock.now() + 5.0
        parts = None
        while clock.now() < deadline:
            parts = m.update_gap_parts("card_count")
            if parts is not None:
                break
            time.sleep(0.01)
        rep["parts"] = parts
        rep["gap_ms"] = None if parts is None else parts["old_ms"] + parts["new_ms"]
        out.append(rep)
        time.sleep(0.2)


def _counts_ok(res: np.ndarray) -> bool:
    """Every card's flags, in output order, read 1, 2, ..., n (state carried, order kept)."""
    order = np.argsort(res["card"], kind="stable")
    c, f = res["card"][order], res["flag"][order]
    starts = np.r_[0, np.flatnonzero(c[1:] != c[:-1]) + 1]
    rank = np.arange(len(c)) - np.repeat(starts, np.diff(np.r_[starts, len(c)]))
    return bool(np.all(f == rank + 1))


def run(
    backends: list[str],
    n: int = 500_000,
    batch: int = 1000,
    rate: float = 10_000,
    paced_n: int = 20_000,
    state_cards: int = 131_072,
    updates: int = 5,
    clock: Clock | None = None,
) -> list[dict[str, Any]]:
    """The benchmark rows for `backends` (native, embedded, redis, redis-faithful)."""
    clock = clock or MonotonicClock()
    known = ("native", "embedded", "embedded-proc", "redis", "redis-faithful", "redis-cepless")
    for b in backends:
        if b not in known:
            raise TidalError(f"unknown backend {b!r}; choose from {list(known)}")
    # Host threads (flusher, receiver, main) hand the GIL over every 0.5 ms, not 5 ms; the
    # objects of start-up (imports, numpy, pydantic) leave the collector's generations, so a
    # full collection does not walk them (one took 51 ms in the middle of a paced run here).
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    gc.collect()
    gc.freeze()
    try:
        rows = []
        for b in backends:
            if b == "native":
                rows.append(_native(n, batch, clock))
                continue
            kind = b if b.startswith("embedded") else "redis"
            mode = "faithful" if b in ("redis-faithful", "redis-cepless") else "blob"
            pop = "pop" if b == "redis-cepless" else "commit"
            nn = max(n // 5, 20_000) if mode == "faithful" else n
            rows.append(
                run_backend(
                    kind, mode, nn, batch, rate, paced_n, state_cards, clock, updates, pop=pop
                )
            )
        return rows
    finally:
        gc.unfreeze()
        sys.setswitchinterval(old_switch)
