"""`tidal cep bench --update-gap`: the hot-update gap as a user sees it, from the results.

A host streams events paced at `rate` events/s (default 50,000) through a stateful
per-card counter with `cards` cards of keyed state (default 131,072: 1 MB in the Python
operator's `DenseKeyedState` and in the Node.js one's Float64Array; `node-json` keeps the
same counts in a plain array, about 1 MB of JSON to parse at a hand-over) and hot-updates it
`updates` times. Every result carries the version that produced it (``TIDAL_CEP_STAMP``), and
the host records when it received each result batch. The gap of one update is the time
from the host receiving the last result of the old version to receiving the first result of
the new one (0 when both arrive in the same poll). Lost and duplicated events are counted
by sequence number and every card's counts must read 1..n (state carried, order kept).
Python runs the packed codec, Node.js the json codec (the only one it speaks); both over
the embedded store, as `tidal cep serve` runs them. A Node.js update is in place by default
(`node_update="swap"`: the running runtime loads the new module and switches at the barrier,
the state stays in memory); `node_update="process"` measures the hand-over to a new
(pre-started) runtime instead. The peer figure of each row, from the same run, is the longest
time between two consecutive result receipts of one version (`steady_max_interval_ms`): the
stream's own stalls on this machine, with no update involved.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

from tidal.cep import operators, workload
from tidal.cep.client import OperatorClient
from tidal.cep.codec import Codec, CodecName
from tidal.cep.manager import DeployDefaults, NodeManager
from tidal.cep.registry import VersionSpec
from tidal.cep.sockstore import SocketStoreServer
from tidal.cep.store import MemoryStore, open_store
from tidal.core.clock import Clock, MonotonicClock

# The Node.js counterpart of the Python operator's dense keyed state: 8 bytes a card in a
# Float64Array, which the SDK hands over as raw bytes (sdk/node/state.js).
NODE_COUNT = """
const V = Number(process.env.TIDAL_CEP_VERSION || 0);
const CARDS = Number(process.env.TIDAL_CEP_STATE_CARDS || 1024);
module.exports = {
  process(events, state) {
    if (!state.c) state.c = new Float64Array(CARDS);  // CARDS * 8 bytes
    return events.map((e) => {
      state.c[e.card] += 1;
      return { seq: e.seq, card: e.card, flag: state.c[e.card], merchant: V };
    });
  },
};
"""

# The same state as a plain JSON array (1 MB of JSON): a hand-over parses it.
NODE_COUNT_JSON = """
const V = Number(process.env.TIDAL_CEP_VERSION || 0);
const CARDS = Number(process.env.TIDAL_CEP_STATE_CARDS || 1024);
const BASE = 1000000;  // 7-digit counters: CARDS * 8 bytes of JSON state
module.exports = {
  process(events, state) {
    if (!state.c) state.c = new Array(CARDS).fill(BASE);
    return events.map((e) => {
      state.c[e.card] += 1;
      return { seq: e.seq, card: e.card, flag: state.c[e.card] - BASE, merchant: V };
    });
  },
};
"""


def _spec(lang: str, cards: int) -> VersionSpec:
    env = {"TIDAL_CEP_STATE_CARDS": str(cards), "TIDAL_CEP_STAMP": "version"}
    if os.environ.get("TIDAL_CEP_TRACE") == "1":
        env["TIDAL_CEP_TRACE"] = "1"
    if lang in ("node", "node-json"):
        src = NODE_COUNT if lang == "node" else NODE_COUNT_JSON
        return VersionSpec(language="node", source=src, env=env)
    return VersionSpec(source=operators.path("card_count").read_text(), env=env)


def _gaps(recv: list[tuple[float, int, int]], updates: int) -> list[float]:
    """Per update v -> v+1: first receive of v+1 minus last receive of v, in ms."""
    out = []
    for v in range(1, updates + 1):
        last_old = max((t for t, lo, hi in recv if lo <= v <= hi), default=None)
        first_new = min((t for t, lo, hi in recv if lo <= v + 1 <= hi), default=None)
        if last_old is not None and first_new is not None:
            out.append(max(0.0, first_new - last_old) * 1e3)
    return out


def _steady_max_ms(recv: list[tuple[float, int, int]]) -> float | None:
    """The peer of the gap in the same run: the longest time between two consecutive result
    receipts of one version (no update between them), in ms."""
    ts = sorted(recv)
    out = [
        (b[0] - a[0]) * 1e3
        for a, b in zip(ts, ts[1:], strict=False)
        if a[1] == a[2] == b[1] == b[2]
    ]
    return max(out) if out else None


def run_gap(
    lang: str,
    rate: float = 50_000,
    cards: int = 131_072,
    updates: int = 5,
    batch: int = 1000,
    clock: Clock | None = None,
    node_update: str = "swap",
) -> dict[str, Any]:
    """One row: median and max gap from the results, update_ms, lost, duplicated.
    `node_update`: how a Node.js version replaces the running one (DeployDefaults)."""
    clock = clock or MonotonicClock()
    # The host's threads (pacing loop, flusher, receiver) and the embedded store's serving
    # threads share one GIL here: hand it over every 0.5 ms, not 5 ms (as `tidal cep bench`
    # and `tidal cep serve` do), so an operator's store round trip does not wait behind them.
    # Start-up objects leave the collector's generations (a full collection walking them
    # paused this process 51 ms once), as in `tidal cep bench`.
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    gc.collect()
    gc.freeze()
    try:
        return _run_gap(lang, rate, cards, updates, batch, clock, node_update)
    finally:
        gc.unfreeze()
        sys.setswitchinterval(old_switch)


def _run_gap(
    lang: str, rate: float, cards: int, updates: int, batch: int, clock: Clock, node_update: str
) -> dict[str, Any]:
    codec: CodecName = "packed" if lang == "python" else "json"
    n = int(rate * (0.5 + 0.4 * updates + 0.5))
    arr = workload.transactions(n, seed=11, cards=cards)
    with tempfile.TemporaryDirectory(prefix="tidal-cep-gap-") as root:
        srv = SocketStoreServer(MemoryStore(f"gap-{lang}"), f"{root}/store.sock")
        d = DeployDefaults(codec=codec, batch=batch, node_update=node_update)
        m = NodeManager(root, srv.url, d)
        try:
            for _ in range(updates + 1):
                m.register("cc", _spec(lang, cards))
            a = m.request("cc", 1)
            cl = OperatorClient(
                open_store(a["store"]), a["in"], a["out"], Codec(codec), batch=batch, clock=clock
            )
            reports: list[dict[str, Any]] = []
            recv: list[tuple[float, int, int]] = []
            seqs: list[np.ndarray] = []
            cards_out: list[np.ndarray] = []
            flags: list[np.ndarray] = []
            started = threading.Event()

            def updater() -> None:
                started.wait()
                time.sleep(0.5)
                for v in range(2, updates + 2):
                    reports.append(m.update("cc", v))
                    time.sleep(0.4)

            th = threading.Thread(target=updater, name="cep-gap-updates", daemon=True)
            th.start()
            chunk = max(1, int(rate / 1000))
            evs = workload.as_dicts(arr) if codec == "json" else None
            t0 = clock.now()
            i = got = 0
            while got < n and clock.now() - t0 < 120:
                if i < n and clock.now() >= t0 + i / rate:
                    cl.submit(evs[i : i + chunk] if evs is not None else arr[i : i + chunk])
                    i += chunk
                    started.set()
                for b in cl.poll():
                    now = clock.now()
                    if isinstance(b, np.ndarray):
                        s, c, f, v = b["seq"], b["card"], b["flag"], b["merchant"]
                    else:
                        s = np.array([e["seq"] for e in b])
                        c = np.array([e["card"] for e in b])
                        f = np.array([e["flag"] for e in b])
                        v = np.array([e["merchant"] for e in b])
                    recv.append((now, int(v.min()), int(v.max())))
                    seqs.append(s)
                    cards_out.append(c)
                    flags.append(f)
                    got += len(s)
                time.sleep(0.0002)
            th.join(30)
            cl.close()
        finally:
            m.close()
            srv.close()
    s_all = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
    uniq = np.unique(s_all)
    c_all, f_all = np.concatenate(cards_out), np.concatenate(flags)
    order = np.argsort(c_all, kind="stable")
    c_s, f_s = c_all[order], f_all[order]
    starts = np.r_[0, np.flatnonzero(c_s[1:] != c_s[:-1]) + 1]
    rank = np.arange(len(c_s)) - np.repeat(starts, np.diff(np.r_[starts, len(c_s)]))
    gaps = _gaps(recv, updates)
    if os.environ.get("TIDAL_CEP_TRACE") == "1":  # host side of the phase trace
        for u in range(1, updates + 1):
            old = max((t for t, lo, hi in recv if lo <= u <= hi), default=0.0)
            new = min((t for t, lo, hi in recv if lo <= u + 1 <= hi), default=0.0)
            print(f"tidal-cep host v{u} last result t={old:.6f}, v{u + 1} first t={new:.6f}")
    return {
        "backend": f"update-gap-{lang}"
        + ("-process" if lang != "python" and node_update == "process" else ""),
        "events": n,
        "rate": rate,
        "state_cards": cards,
        "updates": len(reports),
        "gap_from_results_ms": [round(g, 2) for g in gaps],
        "gap_median_ms": float(np.median(gaps)) if gaps else None,
        "gap_max_ms": max(gaps) if gaps else None,
        "steady_max_interval_ms": _steady_max_ms(recv),
        "node_update": node_update if lang.startswith("node") else None,
        "update_ms": [round(r["update_ms"], 1) for r in reports],
        "lost_events": int(n - len(uniq)),
        "duplicated_events": int(len(s_all) - len(uniq)),
        "per_key_counts_ok": bool(np.all(f_s == rank + 1)),
    }
