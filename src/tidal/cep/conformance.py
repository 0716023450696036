"""Conformance of a host or an operator implementation to the queue protocol
(docs/cep-protocol.md). Any language can be checked: the implementation runs as a process.

Host role (`check_host`): the suite plays the operator with its own reference loop written
from the spec (not the Python SDK): it pops frames with ``LRANGE in 0 B-1``, checks each one
(kind ``J`` or ``P``, at most B events, sequence numbers in order across frames), echoes the
events with ``flag = 1`` and commits ``MULTI; RPUSH out ...; LTRIM in n -1; EXEC``. The host,
started with ``TIDAL_CEP_STORE, TIDAL_CEP_IN, TIDAL_CEP_OUT, TIDAL_CEP_BATCH,
TIDAL_CEP_CONFORMANCE_N``, must push events ``seq = 0..N-1`` and read the results back; it
prints ``{"received": n, "in_order": bool}``. At the end both queues must be empty.

Operator role (`check_operator`): the node manager starts the operator version under test
(the environment contract); the suite is the host, pushing raw frames of 1..B events and
reading the out queue itself. The operator must implement the conformance behaviour (`PY_ECHO`
and `NODE_ECHO` are the references): echo each event with ``count`` = the running number of
events it has seen (keyed state) and exit the process on an event with ``"poison": true``.
Checks: every result exactly once and in order, result frames of at most B events, the
readiness signal; after ``kill -9``: exactly once and ``count`` continuous (checkpoints); a
poison event parked after N failures while the stream goes on; a hot update: exactly once,
``count`` continuous (state handed over).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tidal.cep.codec import TXN_DTYPE, is_control
from tidal.cep.store import Store, open_store
from tidal.core.errors import TidalError

PY_ECHO = """
import os

from tidal.cep.sdk.python import Operator


class Echo(Operator):
    def process(self, batch):
        out = []
        for ev in batch:
            if ev.get("poison"):
                os._exit(3)
            self.state["n"] = self.state.get("n", 0) + 1
            out.append({**ev, "count": self.state["n"]})
        return out


OPERATOR = Echo
"""
NODE_ECHO = """
module.exports = {
  process(events, state) {
    return events.map((e) => {
      if (e.poison) process.exit(3);
      state.n = (state.n || 0) + 1;
      return { ...e, count: state.n };
    });
  },
};
"""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


def _events_of(frame: bytes) -> list[Any]:
    if frame[:1] == b"J":
        v = json.loads(frame[1:])
        return v if isinstance(v, list) else [v]
    if frame[:1] == b"P":
        if (len(frame) - 1) % TXN_DTYPE.itemsize:
            raise TidalError(f"packed frame of {len(frame) - 1} bytes is not whole records")
        return list(np.frombuffer(frame[1:], dtype=TXN_DTYPE))
    raise TidalError(f"frame kind {frame[:1]!r} is neither J nor P")


def _echo(frame: bytes) -> bytes:
    if frame[:1] == b"P":
        arr = np.frombuffer(frame[1:], dtype=TXN_DTYPE).copy()
        arr["flag"] = 1
        return b"P" + arr.tobytes()
    evs = [{**e, "flag": 1} for e in _events_of(frame)]
    return b"J" + json.dumps(evs, separators=(",", ":")).encode()


class _ReferenceOperator(threading.Thread):
    """The operator side of the spec, minimal, with checks on every frame popped."""

    def __init__(self, store: Store, in_key: str, out_key: str, batch: int) -> None:
        super().__init__(name="cep-conformance-op", daemon=True)
        self.store, self.in_key, self.out_key, self.batch = store, in_key, out_key, batch
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.frames = self.events = 0
        self.last_seq = -1

    def run(self) -> None:
        while not self.stop.is_set():
            frames = self.store.execute([("lrange", self.in_key, 0, self.batch - 1)])[0]
            if not frames:
                time.sleep(0.0005)
                continue
            outs = []
            for f in frames:
                if is_control(f):
                    continue
                try:
                    evs = _events_of(f)
                except (TidalError, ValueError) as e:
                    self.errors.append(str(e))
                    continue
                if len(evs) > self.batch:
                    self.errors.append(f"a frame of {len(evs)} events exceeds B={self.batch}")
                for ev in evs:
                    s = int(ev["seq"])
                    if s != self.last_seq + 1:
                        self.errors.append(f"seq {s} after {self.last_seq}")
                    self.last_seq = s
                self.frames += 1
                self.events += len(evs)
                outs.append(_echo(f))
            self.store.execute(
                [("rpush", self.out_key, outs), ("ltrim", self.in_key, len(frames), -1)]
            )


def check_host(
    argv: Sequence[str], store_url: str, n: int = 5000, batch: int = 100, timeout: float = 120
) -> list[Check]:
    """Run host `argv` against the reference operator on `store_url` (see module doc)."""
    store = open_store(store_url)
    tag = f"conf{os.getpid()}x{time.monotonic_ns()}"
    in_key, out_key = f"cep:{tag}:in", f"cep:{tag}:out"
    op = _ReferenceOperator(store, in_key, out_key, batch)
    op.start()
    env = {
        **os.environ,
        "TIDAL_CEP_STORE": store_url,
        "TIDAL_CEP_IN": in_key,
        "TIDAL_CEP_OUT": out_key,
        "TIDAL_CEP_BATCH": str(batch),
        "TIDAL_CEP_CONFORMANCE_N": str(n),
    }
    try:
        r = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=timeout)
    finally:
        op.stop.set()
        op.join(5)
    checks = [Check("host exits 0", r.returncode == 0, r.stderr.strip()[-500:])]
    try:
        rep = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        store.close()
        return [*checks, Check("host prints its report", False, r.stdout[-300:])]
    n_in, n_out = store.execute([("llen", in_key), ("llen", out_key)])
    checks += [
        Check("frames valid, <= B events each, FIFO", not op.errors, "; ".join(op.errors[:3])),
        Check(f"operator got all {n} events once", op.events == n, f"got {op.events}"),
        Check(f"host received all {n} results", rep.get("received") == n, str(rep)),
        Check("results in order at the host", rep.get("in_order") is True, str(rep)),
        Check("queues empty at the end", int(n_in) == 0 and int(n_out) == 0, f"{n_in}, {n_out}"),
    ]
    store.close()
    return checks


def _push(store: Store, key: str, evs: list[dict[str, Any]], batch: int, rng: Any) -> None:
    i = 0
    frames = []
    while i < len(evs):
        k = int(rng.integers(1, batch + 1))
        frames.append(b"J" + json.dumps(evs[i : i + k]).encode())
        i += k
    store.push(key, frames)


def _read(store: Store, key: str, batch: int, want: int, timeout: float) -> tuple[list[Any], int]:
    """Read results until `want` events arrived; returns (events, largest frame)."""
    got: list[Any] = []
    biggest = 0
    t = time.monotonic()
    while len(got) < want and time.monotonic() - t < timeout:
        frames = store.execute([("lrange", key, 0, batch - 1), ("ltrim", key, batch, -1)])[0]
        for f in frames:
            evs = _events_of(f)
            biggest = max(biggest, len(evs))
            got += evs
        if not frames:
            time.sleep(0.002)
    return got, biggest


def check_operator(
    root: Path, store_url: str, spec: Any, batch: int = 50, timeout: float = 60
) -> list[Check]:
    """Run operator version `spec` (a `VersionSpec` implementing the conformance behaviour)
    under a node manager on `store_url` and check it (see module docstring)."""
    from tidal.cep.manager import DeployDefaults, NodeManager  # the manager runs the operator

    rng = np.random.default_rng(7)
    m = NodeManager(root, store_url, DeployDefaults(codec="json", batch=batch, max_failures=2))
    store = m.store
    checks: list[Check] = []
    try:
        m.register("conf", spec)
        m.register("conf", spec)
        a = m.request("conf", 1)
        evs = [{"seq": i} for i in range(600)]
        _push(store, a["in"], evs[:200], batch, rng)
        got, biggest = _read(store, a["out"], batch, 200, timeout)
        seqs = [e["seq"] for e in got]
        ready = store.execute([("llen", f"cep:{m.deployments['conf'].instance}:ready")])[0]
        checks += [
            Check("readiness signal pushed", int(ready) >= 1, f"llen ready = {ready}"),
            Check("results exactly once, in order", seqs == list(range(200)), str(seqs[:10])),
            Check(f"result frames <= B={batch} events", biggest <= batch, f"largest {biggest}"),
            Check("keyed state counts 1..n", [e["count"] for e in got] == list(range(1, 201))),
        ]
        # kill -9 in the middle of a stream: redelivery, no duplicate, state from checkpoints
        _push(store, a["in"], evs[200:400], batch, rng)
        time.sleep(0.05)
        pid = m.deployments["conf"].proc.pid
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        got2, _ = _read(store, a["out"], batch, 200, timeout)
        checks += [
            Check(
                "after kill -9: exactly once, in order",
                [e["seq"] for e in got2] == list(range(200, 400)),
                f"{len(got2)} results",
            ),
            Check(
                "after kill -9: keyed state kept",
                [e["count"] for e in got2] == list(range(201, 401)),
                str([e["count"] for e in got2][:5]),
            ),
        ]
        # a poison event: crashes N times, is parked, the stream goes on
        _push(store, a["in"], [*evs[400:450], {"seq": -1, "poison": True}, *evs[450:500]], 1, rng)
        got3, _ = _read(store, a["out"], batch, 100, timeout)
        parked = m.parked("conf")
        checks += [
            Check(
                "poison event parked, the rest delivered once",
                [e["seq"] for e in got3] == list(range(400, 500))
                and len(parked) == 1
                and b"poison" in parked[0],
                f"{len(got3)} results, {len(parked)} parked",
            ),
        ]
        # hot update to version 2 in the middle of a stream: state handed over
        _push(store, a["in"], evs[500:550], batch, rng)
        rep = m.update("conf", 2)
        _push(store, a["in"], evs[550:600], batch, rng)
        got4, _ = _read(store, a["out"], batch, 100, timeout)
        counts = [e["count"] for e in got4]
        checks += [
            Check(
                "hot update: exactly once, in order",
                [e["seq"] for e in got4] == list(range(500, 600)),
                f"old exit {rep['old_exit']}",
            ),
            Check(
                "hot update: keyed state handed over",
                counts == list(range(counts[0], counts[0] + 100)) and counts[0] > 400
                if counts
                else False,
                str(counts[:3]),
            ),
        ]
    finally:
        m.close()
    return checks


def report(checks: list[Check]) -> str:
    return "\n".join(f"{'PASS' if c.ok else 'FAIL'}  {c.name}  {c.detail}" for c in checks)


def python_host_main() -> int:
    """The Python host (`OperatorClient`) in the host role: ``python -m
    tidal.cep.conformance host``."""
    from tidal.cep.client import OperatorClient
    from tidal.cep.codec import Codec

    env = os.environ
    n, b = int(env["TIDAL_CEP_CONFORMANCE_N"]), int(env["TIDAL_CEP_BATCH"])
    cl = OperatorClient(
        open_store(env["TIDAL_CEP_STORE"]), env["TIDAL_CEP_IN"], env["TIDAL_CEP_OUT"],
        Codec("json"), batch=b,
    )  # fmt: skip
    for i in range(0, n, 333):
        cl.submit([{"seq": j} for j in range(i, min(n, i + 333))])
    got: list[dict[str, Any]] = []
    t = time.monotonic()
    while len(got) < n and time.monotonic() - t < 60:
        got += cl.results()
        time.sleep(0.002)
    cl.close()
    seqs = [e["seq"] for e in got]
    print(json.dumps({"received": len(got), "in_order": seqs == list(range(len(got)))}))
    return 0


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["host"]:
        sys.exit("usage: python -m tidal.cep.conformance host")
    sys.exit(python_host_main())
