"""`tidal cep bench --flink`: one detection, three hosts, one run.

The detection: per card, a purchase under 5 followed by one over 500 within 10 minutes
(event time), over the same `n` seeded transactions (written once as packed records).

- ``flink-tidal-operator``: a Java Flink DataStream job on Flink's local mini-cluster calls
  the Tidal operator `small_large` as ``serverless("small_large")``: it requests the operator
  from the node manager over HTTP and speaks the queue protocol (docs/cep-protocol.md) to
  Redis with its own RESP client (src/tidal/cep/flink-job/);
- ``flinkcep``: the same detection in FlinkCEP, Flink's own CEP library
  (``begin(small).followedByAny(large).within(10 min)``, keyed by card, event time);
- ``tidal-python-host``: Tidal's Python host (`OperatorClient`) calling the same operator.

The operator emits every event (flag 2 on a match), so the Tidal rows count lost and
duplicated events by sequence number; FlinkCEP emits matches only, so its row counts lost
and duplicated matches against the reference (the operator's code run in-process). Every
row also compares its matched large transactions with the reference. Latency: from the
event entering the host (Flink's source map / `submit`) to its result reaching the host's
sink. The Java job is built by ``make cep-flink`` into ``build/cep-flink`` (jars taken from
the apache-flink-libraries wheel).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from tidal.cep import operators, workload
from tidal.cep.client import OperatorClient
from tidal.cep.codec import Codec
from tidal.cep.manager import DeployDefaults, NodeManager
from tidal.cep.registry import VersionSpec
from tidal.cep.sdk.python.operator import load_operator
from tidal.cep.store import open_store
from tidal.core.clock import Clock, MonotonicClock
from tidal.core.errors import TidalError
from tidal.core.shared import repo_root

JAVA_OPENS = [
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
]


def build_dir() -> Path:
    return Path(os.environ.get("TIDAL_CEP_FLINK_BUILD", repo_root() / "build" / "cep-flink"))


def _reference(arr: np.ndarray, batch: int) -> np.ndarray:
    """Sequence numbers of the matched large transactions: the operator's code in-process."""
    old = os.environ.get("TIDAL_CEP_EMIT")
    os.environ["TIDAL_CEP_EMIT"] = "all"
    try:
        op = load_operator(operators.path("small_large"))
    finally:
        if old is None:
            del os.environ["TIDAL_CEP_EMIT"]
        else:
            os.environ["TIDAL_CEP_EMIT"] = old
    outs = np.concatenate([op.process(arr[i : i + batch]) for i in range(0, len(arr), batch)])
    return np.asarray(outs["seq"][outs["flag"] == 2])


def _java(
    mode: str, d: Path, files: dict[str, Path], n: int, url: str, token: str
) -> dict[str, Any]:
    b = build_dir()
    if not (b / "classes").is_dir() or not (b / "lib").is_dir():
        raise TidalError(f"the Flink job is not built in {b}: run `make cep-flink` first")
    java = shutil.which("java")
    if java is None:
        raise TidalError("java is not installed (apt-get install default-jdk-headless)")
    out = d / f"{mode}.json"
    log4j = repo_root() / "src" / "tidal" / "cep" / "flink-job" / "log4j2.properties"
    cmd = [
        java,
        "-Xmx2g",
        *JAVA_OPENS,
        f"-Dlog4j.configurationFile={log4j}",
        "-cp",
        f"{b / 'classes'}:{b / 'lib'}/*",
        "tidal.cep.flink.Main",
        "--mode",
        mode,
        "--events",
        str(files["events"]),
        "--n",
        str(n),
        "--expected",
        str(files["expected"]),
        "--out",
        str(out),
        "--url",
        url,
        "--op",
        "sl_flink",
    ]
    env = {**os.environ, "TIDAL_CEP_TOKEN": token}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if r.returncode != 0 or not out.is_file():
        raise TidalError(f"the Flink job ({mode}) failed: {r.stderr.strip()[-2000:]}")
    return dict(json.loads(out.read_text()))


def _python_host(
    m: NodeManager, arr: np.ndarray, expected: np.ndarray, batch: int, clock: Clock
) -> dict[str, Any]:
    from tidal.bench.cep import _check, _stream  # function-local: one bench imports the other

    a = m.request("sl_python")
    cl = OperatorClient(
        open_store(a["store"]), a["in"], a["out"], Codec("packed"), batch=batch, clock=clock
    )
    try:
        res, dt, lat = _stream(cl, arr, clock, None, window=50_000)
    finally:
        cl.close()
    lost, dup = _check(arr, res)
    got = np.unique(res["seq"][res["flag"] == 2])
    return {
        "backend": "tidal-python-host",
        "events": len(arr),
        "seconds": dt,
        "events_per_s": len(arr) / dt,
        "results": len(res),
        "p50_ms": float(np.percentile(lat, 50)) if lat else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat else None,
        "max_ms": max(lat) if lat else None,
        "lost_events": lost,
        "duplicated_events": dup,
        "matches": len(got),
        "matches_expected": len(expected),
        "matches_missing": len(np.setdiff1d(expected, got)),
        "matches_extra": len(np.setdiff1d(got, expected)),
        "loss_counted_on": "events",
    }


def run_flink(
    n: int = 500_000, batch: int = 1000, clock: Clock | None = None
) -> list[dict[str, Any]]:
    """The three rows (see module docstring), measured in this order in one run."""
    import uvicorn

    from tidal.cep.api import make_app
    from tidal.cep.redis_server import RedisServer, free_port

    clock = clock or MonotonicClock()
    arr = workload.transactions(n, seed=5)
    expected = _reference(arr, batch)
    token = "bench-" + os.urandom(12).hex()
    with tempfile.TemporaryDirectory(prefix="tidal-cep-flink-") as tmp, RedisServer() as rs:
        d = Path(tmp)
        files = {"events": d / "events.bin", "expected": d / "expected.txt"}
        files["events"].write_bytes(np.ascontiguousarray(arr).tobytes())
        files["expected"].write_text("\n".join(str(int(s)) for s in expected))
        m = NodeManager(d / "nm", rs.url, DeployDefaults(codec="packed", mode="blob", batch=batch))
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(make_app(m, token), host="127.0.0.1", port=port, log_level="error")
        )
        th = threading.Thread(target=server.run, name="cep-bench-api", daemon=True)
        th.start()
        try:
            src = operators.path("small_large").read_text()
            for name in ("sl_flink", "sl_python"):
                m.register(name, VersionSpec(source=src, env={"TIDAL_CEP_EMIT": "all"}))
            while not server.started:
                time.sleep(0.01)
            url = f"http://127.0.0.1:{port}"
            rows = [
                _java("tidal", d, files, n, url, token),
                _java("flinkcep", d, files, n, url, token),
            ]
            rows.append(_python_host(m, arr, expected, batch, clock))
        finally:
            server.should_exit = True
            th.join(10)
            m.close()
    for r in rows:
        r["batch"] = batch
    return rows
