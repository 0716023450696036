"""`tidal bench dataplane`: Tidal vs Ray Serve vs a bare inline ASGI app, same wrk load.

Each server runs in its own process (Tidal: `tidal serve` with a generated config; bare:
`tidal.bench.dataplane_apps:bare_app` on uvicorn; Ray Serve: `tidal.bench.peers_ray_app`, the
app `tidal bench goodput` runs). Load comes from
wrk (one thread, keep-alive connections, closed loop) with the identical request body for every
server: OIP v2 JSON (64 floats) for `noop`, and the OIP binary tensor extension (one 3x224x224
float32 image) for `resnet18`, served at max batch 8 on the whole machine (2 cores) by both.

`tidal bench dataplane` then runs `tidal.bench.dataplane_protocols` (REST JSON, REST binary
and gRPC side by side at max batch 8, Tidal's gRPC vs Triton's) under the key `protocols`.

For noop it also measures the gateway's scaling over cores (issue 14): `tidal_1core` is
`tidal serve` pinned to CPU 0 (`taskset -c 0`: HTTP, scheduler and the 1-core noop worker all
on that core), `tidal_fe2` is `tidal serve --frontends 2` on the whole machine (two HTTP
front-end processes, the scheduler process and the 2-core worker); wrk runs unpinned on the
same machine in both. Each server's CPU per request (user+system of the server's process tree
over the measured run: gateway processes and the worker apart) says where the time goes.

Output keys: `tidal`, `ray_serve`, `bare_asgi` (noop only): workload -> {rps, p50_ms, p99_ms};
`ratios`: workload -> tidal rps / ray_serve rps; plus `one_connection` (p50 at 1 connection and
Tidal's overhead over the bare app), `tidal_vs_bare`, `tidal_1core_vs_bare`, the 2-core
scaling as `fe2_vs_1core` (two front ends) and `tidal_2core_vs_1core` (one gateway process and
its worker on the whole machine, against the same pinned to one core), `cpu_us_per_request`
(server -> {gateway, worker, frontends}: `frontends` is the front-end processes' share of
`gateway`), `non_2xx`, the settings used (with the load average at start
and end).
Figures only: nothing here is asserted by tests.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tidal.core.errors import TidalError

Echo = Callable[[str], Any] | None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bodies(tmp: Path) -> dict[str, tuple[Path, dict[str, str]]]:
    """Request body file and headers per workload."""
    noop = {
        "inputs": [
            {
                "name": "input-0",
                "shape": [1, 64],
                "datatype": "FP32",
                "data": [round(i / 64, 4) for i in range(64)],
            }
        ]
    }
    p_noop = tmp / "noop.json"
    p_noop.write_bytes(json.dumps(noop).encode())
    img = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [1, 3, 224, 224],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": img.nbytes},
                }
            ]
        }
    ).encode()
    p_img = tmp / "resnet18.bin"
    p_img.write_bytes(header + img.tobytes())
    return {
        "noop": (p_noop, {"Content-Type": "application/json"}),
        "resnet18": (
            p_img,
            {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(header)),
            },
        ),
    }


def _lua(tmp: Path, body: Path, headers: dict[str, str]) -> Path:
    lines = ['wrk.method = "POST"', f'local f = io.open("{body}", "rb")', "wrk.body = f:read('*a')"]
    lines.append("f:close()")
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    p = tmp / f"{body.stem}.lua"
    p.write_text("\n".join(lines) + "\n")
    return p


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_wrk(out: str) -> dict[str, float]:
    """rps, p50_ms, p99_ms and non_2xx from `wrk --latency` output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors:.*", out)
    return {
        "rps": round(rps, 1),
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errs.group(0) if errs else "",  # type: ignore[dict-item]
    }


def _wrk(url: str, lua: Path, connections: int, duration: float) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency"]
    cmd += ["--timeout", "10s", "-s", str(lua), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if out.returncode != 0:
        raise TidalError(f"wrk failed: {out.stderr.strip() or out.stdout.strip()}")
    return parse_wrk(out.stdout)


def _wait_http(url: str, body: Path, headers: dict[str, str], proc: subprocess.Popen[Any],
               timeout: float) -> None:  # fmt: skip
    data = body.read_bytes()
    t_end = time.monotonic() + timeout
    last = ""
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            raise TidalError(f"server exited with {proc.returncode} before it was ready")
        try:
            req = urllib.request.Request(url, data=data, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=10) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.3)
    raise TidalError(f"server at {url} not ready after {timeout:.0f} s ({last})")


class _Server:
    """A server subprocess in its own session, stopped by its pid (and its group on failure)."""

    def __init__(self, cmd: list[str], stdin: bool = False, env: dict[str, str] | None = None):
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdin else self.log,
            stderr=self.log,
            start_new_session=True,
            env=env,
        )

    def wait_line(self, word: str, timeout: float) -> None:
        assert self.proc.stdout is not None
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            line = self.proc.stdout.readline()
            if not line:
                break
            if word.encode() in line:
                return
        self.log.seek(0)
        raise TidalError(
            f"{word} never printed: {self.log.read()[-2000:].decode(errors='replace')}"
        )

    def stop(self, timeout: float = 60.0) -> None:
        p = self.proc
        if p.stdin is not None:
            with contextlib.suppress(OSError):
                p.stdin.close()
        elif p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        self.log.close()


def _tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user+system) of `pid` and its descendants: `gateway` (every gateway
    process, front ends included), `worker`, and `frontends` (the HTTP front-end processes
    of `--frontends N` alone, 0 without them: the scheduler process is gateway - frontends)."""
    import psutil

    out = {"gateway": 0.0, "worker": 0.0, "frontends": 0.0}
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return out
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            cmd = " ".join(p.cmdline())
            key = "worker" if "worker_main" in cmd else "gateway"
            out[key] += t.user + t.system
            if "tidal.dataplane.frontend" in cmd:
                out["frontends"] += t.user + t.system
    return out


def _tidal_config(tmp: Path, workload: str, port: int, cores: float = 2.0) -> Path:
    """`cores`: the worker's (the whole machine, like the peers; 1 when pinned to a core)."""
    batch = 32 if workload == "noop" else 8
    cfg = {
        "host": "127.0.0.1",
        "port": port,
        "default_slo_ms": 30_000,
        "max_body_bytes": 4 * 1024 * 1024,
        "models": [{"name": workload, "variants": [workload]}],
        "plan": {
            "stages": [
                {
                    "stage": workload,
                    "variants": [{"name": workload}],
                    "replicas": 1,
                    "cores": cores,
                    "batch": batch,
                }
            ]
        },
    }
    p = tmp / f"tidal-{workload}-{cores:g}.yaml"
    p.write_text(json.dumps(cfg))  # JSON is YAML
    return p


def _ray_spec(port: int, workload: str) -> dict[str, Any]:
    """Ray Serve's app (tidal.bench.peers_ray_app, the one `tidal bench goodput` runs): one
    replica, max batch 8, 2 threads; the noop inline, resnet18 on Tidal's cached ONNX file."""
    onnx_file = None
    if workload != "noop":
        from tidal.models.onnx_cache import onnx_path  # the model zoo only for resnet18

        onnx_file = str(onnx_path(workload))
    return {"port": port, "model": workload, "max_batch": 8, "threads": 2, "onnx": onnx_file}


def run_bench(
    duration: float = 8.0,
    connections: int = 16,
    ray: bool = True,
    workloads: list[str] | None = None,
    echo: Echo = None,
) -> dict[str, Any]:
    """Run every server and workload in turn; return the figures (see the module docstring)."""
    if shutil.which("wrk") is None:
        raise TidalError("wrk not found: apt-get install wrk")
    workloads = workloads or ["noop", "resnet18"]
    for w in workloads:
        if w not in ("noop", "resnet18"):
            raise TidalError(f"unknown workload {w!r}; valid: noop, resnet18")
    say = echo or (lambda s: None)
    py = sys.executable
    res: dict[str, Any] = {"tidal": {}, "ray_serve": {}, "bare_asgi": {}, "tidal_1core": {},
                           "tidal_fe2": {}}  # fmt: skip
    extra: dict[str, Any] = {"one_connection": {}, "non_2xx": {}, "cpu_us_per_request": {}}
    res["settings"] = {
        "duration_s": duration,
        "connections": connections,
        "resnet18_connections": 8,
        "load": "wrk -t1 (closed loop, keep-alive)",
        "loadavg_at_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="tidal-bench-") as d:
        tmp = Path(d)
        bodies = _bodies(tmp)
        bare = [py, "-m", "uvicorn", "tidal.bench.dataplane_apps:bare_app", "--loop", "uvloop",
                "--http", "httptools", "--no-access-log", "--log-level", "warning",
                "--host", "127.0.0.1", "--port", "{port}"]  # fmt: skip
        tidal = [py, "-m", "tidal.cli.main", "serve", "{cfg}", "--port", "{port}"]
        runs: list[tuple[str, str, list[str], bool]] = []
        for w in workloads:
            if w == "noop":
                runs.append((w, "bare_asgi", bare, False))
            runs.append((w, "tidal", tidal, False))
            if w == "noop" and shutil.which("taskset") is not None:
                runs.append((w, "tidal_1core", ["taskset", "-c", "0", *tidal], False))
            if w == "noop":
                runs.append((w, "tidal_fe2", [*tidal, "--frontends", "2"], False))
        # Ray last: its many processes take a while to leave after shutdown.
        if ray and importlib.util.find_spec("ray") is None:
            skip = ("ray not installed: uv pip install 'ray[serve]' (or tidal bench goodput "
                    "--install-peers for .venv-peers/ray_serve)")  # fmt: skip
            res["ray_serve"] = {w: {"skipped": skip} for w in workloads}
            say(f"ray_serve skipped: {skip}")
        elif ray:
            runs += [(w, "ray_serve", [py, "-m", "tidal.bench.peers_ray_app"], True)
                     for w in workloads]  # fmt: skip
        for w, name, cmd_t, uses_stdin in runs:
            body, headers = bodies[w]
            lua = _lua(tmp, body, headers)
            conns = connections if w == "noop" else 8
            port = _free_port()
            cfg = _tidal_config(tmp, w, port, 1.0 if name == "tidal_1core" else 2.0)
            cmd = [c.format(port=port, cfg=cfg, w=w) for c in cmd_t]
            if name == "ray_serve":
                cmd.append(json.dumps(_ray_spec(port, w)))
            url = f"http://127.0.0.1:{port}/v2/models/{w}/infer"
            say(f"[{w}] starting {name} ...")
            srv = _Server(cmd, stdin=uses_stdin)
            try:
                if uses_stdin:
                    srv.wait_line("READY", 420)  # Ray Serve's start on a loaded 2-core box
                _wait_http(url, body, headers, srv.proc, 300)
                _wrk(url, lua, conns, 2.0)  # warm-up
                cpu0 = _tree_cpu(srv.proc.pid)
                fig = _wrk(url, lua, conns, duration)
                cpu1 = _tree_cpu(srv.proc.pid)
                n_req = max(1.0, fig["rps"] * max(1, round(duration)))
                extra["cpu_us_per_request"][f"{name}/{w}"] = {
                    k: round((cpu1[k] - cpu0[k]) / n_req * 1e6, 1) for k in cpu0
                }
                extra["non_2xx"][f"{name}/{w}"] = fig.pop("non_2xx")
                fig.pop("socket_errors")
                res[name][w] = fig
                say(f"[{w}] {name} c={conns}: {fig}")
                if w == "noop" and name in ("bare_asgi", "tidal"):
                    one = _wrk(url, lua, 1, duration / 2)
                    extra["one_connection"][name] = {"p50_ms": one["p50_ms"], "rps": one["rps"]}
                    say(f"[{w}] {name} c=1: {one}")
            except TidalError as e:
                res[name][w] = {"error": str(e)}
                say(f"[{w}] {name} failed: {e}")
            finally:
                srv.stop()
    ratios: dict[str, float | None] = {}
    for w in workloads:
        t, r = res["tidal"].get(w, {}), res["ray_serve"].get(w, {})
        ratios[w] = round(t["rps"] / r["rps"], 2) if "rps" in t and r.get("rps") else None
    res["ratios"] = ratios
    t, b = res["tidal"].get("noop", {}), res["bare_asgi"].get("noop", {})
    if "rps" in t and "rps" in b:
        extra["tidal_vs_bare"] = round(t["rps"] / b["rps"], 3)
    one_core, fe2 = res["tidal_1core"].get("noop", {}), res["tidal_fe2"].get("noop", {})
    if "rps" in one_core and "rps" in b:
        extra["tidal_1core_vs_bare"] = round(one_core["rps"] / b["rps"], 3)
    if "rps" in one_core and "rps" in fe2:
        extra["fe2_vs_1core"] = round(fe2["rps"] / one_core["rps"], 3)
    if "rps" in one_core and "rps" in t:
        extra["tidal_2core_vs_1core"] = round(t["rps"] / one_core["rps"], 3)
    one = extra["one_connection"]
    if "tidal" in one and "bare_asgi" in one:
        one["tidal_overhead_p50_ms"] = round(one["tidal"]["p50_ms"] - one["bare_asgi"]["p50_ms"], 3)
    res.update(extra)
    res["settings"]["loadavg_at_end"] = os.getloadavg()[0]
    return res
