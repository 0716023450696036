"""Serving peers for `tidal bench goodput`: Triton, MLServer and Ray Serve, each in its own venv.

The peers are optional extras. Each lives in its own virtual environment under
`$TIDAL_PEERS_DIR` (default `./.venv-peers/<name>`, gitignored), created by
`tidal bench goodput --install-peers` (uv when present, else venv + pip). A peer whose venv is
missing is skipped with a message that names the command that installs it.

Every peer serves the same model file (Tidal's ONNX export of the variant) with ONNX Runtime
at the same thread settings as Tidal's worker (`intra_op_num_threads` = the cores given,
inter-op 1, sequential, spinning off), one replica, dynamic batching up to `max_batch` with a
5 ms batching window, the OIP v2 REST endpoint `POST /v2/models/<model>/infer` (Ray Serve: the
same route on its HTTP proxy), input `input-0` and output `output-0`:

- triton: the `tritonserver` binary shipped in the `nvidia-pytriton` wheel (HTTP frontend). The
  wheel has only the Python backend, so the model is `peers_triton_model.py` running ONNX
  Runtime inside it. The backend stub needs the venv interpreter's libpython on
  `LD_LIBRARY_PATH`. SLO: the dynamic batcher's queue policy (REJECT after the timeout, the
  per-request `timeout` parameter allowed to override it).
- mlserver: `mlserver start` with the custom runtime `peers_mlserver_model.py` and adaptive
  batching. MLServer has no per-request timeout. uvloop is pinned < 0.22 (newer ones break it).
- ray_serve: `peers_ray_app.py` (`@serve.batch`), the SLO as the proxy's `request_timeout_s`
  (HTTP 408 past it: Ray Serve has no per-request deadline either).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tidal.core.errors import TidalError

_HERE = Path(__file__).parent
ORT_VERSION = "1.32.0"

# name -> requirements installed into .venv-peers/<name>
REQUIREMENTS: dict[str, list[str]] = {
    "triton": ["nvidia-pytriton==0.7.0", f"onnxruntime=={ORT_VERSION}", "numpy"],
    "mlserver": ["mlserver==1.7.1", "uvloop<0.22", f"onnxruntime=={ORT_VERSION}"],
    "ray_serve": ["ray[serve]==2.60.0", f"onnxruntime=={ORT_VERSION}", "numpy", "orjson"],
    "granian": ["granian==2.8.7", "numpy", "orjson", "uvloop"],  # tidal bench http-layers
}
PEERS = tuple(REQUIREMENTS)


class PeerUnavailable(TidalError):
    """A peer cannot run here (not installed, or its install is broken); the message says why
    and how to fix it."""


def peers_dir() -> Path:
    """Where the peer venvs live: `$TIDAL_PEERS_DIR`, else `./.venv-peers`."""
    return Path(os.environ.get("TIDAL_PEERS_DIR") or Path.cwd() / ".venv-peers")


def venv_python(name: str) -> Path:
    return peers_dir() / name / "bin" / "python"


def install_peer(name: str, echo: Callable[[str], Any] = print) -> Path:
    """Create `.venv-peers/<name>` with the peer's pinned requirements; return its python."""
    if name not in REQUIREMENTS:
        raise TidalError(f"unknown peer {name!r}; peers: {', '.join(PEERS)}")
    venv = peers_dir() / name
    py = venv / "bin" / "python"
    base = sys.base_prefix + "/bin/python3"
    uv = shutil.which("uv")
    echo(f"installing peer {name} into {venv}: {' '.join(REQUIREMENTS[name])}")
    try:
        if not py.exists():
            if uv:
                subprocess.run([uv, "venv", "-q", "--python", base, str(venv)], check=True)
            else:
                subprocess.run([base, "-m", "venv", str(venv)], check=True)
        if uv:
            cmd = [uv, "pip", "install", "-q", "--python", str(py), *REQUIREMENTS[name]]
        else:
            cmd = [str(py), "-m", "pip", "install", "-q", *REQUIREMENTS[name]]
        subprocess.run(cmd, check=True)
    except (subprocess.CalledProcessError, OSError) as e:
        raise PeerUnavailable(f"peer {name}: install failed ({e})") from None
    return py


def require_peer(name: str) -> Path:
    """The peer's venv python, or PeerUnavailable naming the install command."""
    py = venv_python(name)
    if not py.exists():
        raise PeerUnavailable(
            f"peer {name} not installed ({py} missing): run `tidal bench goodput "
            f"--install-peers` (installs {' '.join(REQUIREMENTS[name])} into {py.parent.parent})"
        )
    return py


@dataclass
class ModelSpec:
    """The model every server serves: its ONNX file and tensor shapes (batch dim excluded)."""

    name: str
    onnx: Path
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    threads: int = 2
    max_batch: int = 8
    slo_ms: float = 200.0


@dataclass
class Launch:
    """How to start one server: command, environment, working dir, and its infer URL."""

    name: str
    cmd: list[str]
    url: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    stdin: bool = False  # serves until stdin closes (Ray Serve)
    startup_timeout_s: float = 300.0
    cleanup: Callable[[], None] | None = None


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment without tokens (nothing secret leaves the bench)."""
    env = {k: v for k, v in os.environ.items() if "TOKEN" not in k and "SECRET" not in k}
    env.pop("VIRTUAL_ENV", None)
    env.update(extra or {})
    return env


def launch_tidal(m: ModelSpec, port: int, workdir: Path) -> Launch:
    """`tidal serve` with one replica of `m` on `threads` cores at max batch `max_batch`."""
    cfg = {
        "host": "127.0.0.1",
        "port": port,
        "default_slo_ms": m.slo_ms,
        "max_body_bytes": 64 * 1024 * 1024,
        "models": [{"name": m.name, "variants": [m.name]}],
        "plan": {
            "stages": [
                {
                    "stage": m.name,
                    "variants": [{"name": m.name}],
                    "replicas": 1,
                    "cores": float(m.threads),
                    "batch": m.max_batch,
                }
            ]
        },
    }
    p = workdir / f"tidal-{m.name}.yaml"
    p.write_text(json.dumps(cfg))  # JSON is YAML
    cmd = [sys.executable, "-m", "tidal.cli.main", "serve", str(p), "--port", str(port)]
    return Launch("tidal", cmd, f"http://127.0.0.1:{port}/v2/models/{m.name}/infer", _clean_env())


def _triton_dist(py: Path) -> Path:
    out = subprocess.run(
        [str(py), "-c", "import pytriton, os; print(os.path.dirname(pytriton.__file__))"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise PeerUnavailable(f"peer triton: cannot import pytriton: {out.stderr.strip()[-300:]}")
    return Path(out.stdout.strip()) / "tritonserver"


def _py_info(py: Path) -> tuple[str, str, str]:
    """(major.minor, libdir of the base interpreter, site-packages) of a venv python."""
    code = (
        "import sys, sysconfig; print('%d.%d' % sys.version_info[:2]); "
        "print(sysconfig.get_config_var('LIBDIR')); print(sysconfig.get_paths()['purelib'])"
    )
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True)
    ver, libdir, site = out.stdout.split("\n")[:3]
    return ver, libdir, site


def launch_triton(m: ModelSpec, port: int, workdir: Path) -> Launch:
    """tritonserver (HTTP only) with a Python-backend model running ONNX Runtime."""
    py = require_peer("triton")
    dist = _triton_dist(py)
    ver, libdir, site = _py_info(py)
    stub = dist / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.exists():
        raise PeerUnavailable(f"peer triton: no Python backend stub for Python {ver} ({stub})")
    # The backend directory: the wheel's python backend plus the stub for this Python.
    backends = workdir / "triton-backends" / "python"
    backends.mkdir(parents=True, exist_ok=True)
    for f in (dist / "backends" / "python").iterdir():
        (backends / f.name).unlink(missing_ok=True)
        (backends / f.name).symlink_to(f)
    (backends / stub.name).unlink(missing_ok=True)
    shutil.copy(stub, backends / stub.name)
    repo = workdir / "triton-models"
    mdir = repo / m.name / "1"
    mdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(_HERE / "peers_triton_model.py", mdir / "model.py")
    dims = ", ".join(map(str, m.input_shape))
    odims = ", ".join(map(str, m.output_shape))
    slo_us = int(m.slo_ms * 1000)
    (repo / m.name / "config.pbtxt").write_text(
        f'name: "{m.name}"\nbackend: "python"\nmax_batch_size: {m.max_batch}\n'
        f'input [{{ name: "input-0" data_type: TYPE_FP32 dims: [{dims}] }}]\n'
        f'output [{{ name: "output-0" data_type: TYPE_FP32 dims: [{odims}] }}]\n'
        "dynamic_batching { max_queue_delay_microseconds: 5000 default_queue_policy { "
        f"timeout_action: REJECT default_timeout_microseconds: {slo_us} "
        "allow_timeout_override: true } }\n"
        "instance_group [{ count: 1 kind: KIND_CPU }]\n"
        f'parameters {{ key: "onnx" value {{ string_value: "{m.onnx}" }} }}\n'
        f'parameters {{ key: "threads" value {{ string_value: "{m.threads}" }} }}\n'
    )
    libs = dist.parent.parent / "nvidia_pytriton.libs"
    ld = ":".join(p for p in (libdir, str(libs), os.environ.get("LD_LIBRARY_PATH", "")) if p)
    env = _clean_env({"LD_LIBRARY_PATH": ld, "PYTHONPATH": site})
    env["PATH"] = f"{py.parent}:{env.get('PATH', '')}"
    cmd = [
        str(dist / "bin" / "tritonserver"),
        f"--model-repository={repo}",
        f"--backend-directory={backends.parent}",
        f"--cache-directory={dist / 'caches'}",
        f"--http-port={port}",
        "--allow-grpc=false",
        "--allow-metrics=false",
        "--log-verbose=0",
        "--exit-timeout-secs=5",
    ]
    return Launch("triton", cmd, f"http://127.0.0.1:{port}/v2/models/{m.name}/infer", env)


def launch_mlserver(m: ModelSpec, port: int, workdir: Path) -> Launch:
    """`mlserver start` with the ONNX Runtime custom runtime and adaptive batching."""
    py = require_peer("mlserver")
    root = workdir / "mlserver"
    mdir = root / m.name
    mdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(_HERE / "peers_mlserver_model.py", mdir / "peers_mlserver_model.py")
    grpc_port = _free_port()
    (root / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": port,
                "grpc_port": grpc_port,
                "metrics_endpoint": None,
                "debug": False,
                "parallel_workers": 1,
            }
        )
    )
    (mdir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": m.name,
                "implementation": "peers_mlserver_model.OnnxModel",
                "max_batch_size": m.max_batch,
                "max_batch_time": 0.005,
                "parameters": {
                    "uri": str(m.onnx),
                    "extra": {"threads": m.threads},
                },
            }
        )
    )
    cmd = [str(py.parent / "mlserver"), "start", str(root)]
    env = _clean_env({"PYTHONPATH": str(mdir)})
    return Launch(
        "mlserver", cmd, f"http://127.0.0.1:{port}/v2/models/{m.name}/infer", env, str(mdir)
    )


def launch_ray(m: ModelSpec, port: int, workdir: Path) -> Launch:
    """Ray Serve (one replica, `@serve.batch`); prints READY and serves until stdin closes."""
    py = require_peer("ray_serve")
    spec = json.dumps(
        {
            "port": port,
            "model": m.name,
            "onnx": str(m.onnx),
            "threads": m.threads,
            "max_batch": m.max_batch,
            "request_timeout_s": m.slo_ms / 1000.0,
            "tmp": tempfile.mkdtemp(prefix="ray", dir="/tmp"),  # AF_UNIX paths <= 107 bytes
        }
    )
    cmd = [str(py), str(_HERE / "peers_ray_app.py"), spec]
    src = str(_HERE.parents[1])  # tidal.bench.dataplane_apps: numpy + orjson only
    env = _clean_env({"RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": src})
    url = f"http://127.0.0.1:{port}/v2/models/{m.name}/infer"
    return Launch("ray_serve", cmd, url, env, stdin=True, startup_timeout_s=420.0)


LAUNCHERS: dict[str, Callable[[ModelSpec, int, Path], Launch]] = {
    "tidal": launch_tidal,
    "triton": launch_triton,
    "mlserver": launch_mlserver,
    "ray_serve": launch_ray,
}
SERVERS = tuple(LAUNCHERS)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    """A started server (its own session, so its children go with it). `stop()` ends it by its
    pid: SIGTERM (or closing stdin), then SIGKILL of its process group after `timeout`."""

    def __init__(self, launch: Launch) -> None:
        self.launch = launch
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            launch.cmd,
            stdin=subprocess.PIPE if launch.stdin else subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=launch.env or None,
            cwd=launch.cwd,
        )

    def tail(self, n: int = 1500) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-n:].decode(errors="replace")

    def wait_ready(self, body: bytes, headers: dict[str, str]) -> float:
        """Poll with a real infer request until it answers 200; seconds it took."""
        t0 = time.monotonic()
        t_end = t0 + self.launch.startup_timeout_s
        last = ""
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise PeerUnavailable(
                    f"{self.launch.name} exited with {self.proc.returncode} before it was ready: "
                    f"{self.tail()}"
                )
            try:
                req = urllib.request.Request(self.launch.url, body, headers, method="POST")
                with urllib.request.urlopen(req, timeout=30) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read()[:300]!r}"
            except (urllib.error.URLError, OSError) as e:
                last = str(e)
            time.sleep(0.5)
        raise PeerUnavailable(
            f"{self.launch.name} not ready after {self.launch.startup_timeout_s:.0f} s "
            f"({last}); log: {self.tail()}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        p = self.proc
        if p.stdin is not None:
            with contextlib.suppress(OSError):
                p.stdin.close()
        elif p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=timeout)
        # Whatever the server left in its session (workers, raylets) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)
        self.log.close()
        if self.launch.cleanup is not None:
            self.launch.cleanup()


__all__ = [
    "LAUNCHERS",
    "PEERS",
    "REQUIREMENTS",
    "SERVERS",
    "Launch",
    "ModelSpec",
    "PeerUnavailable",
    "Running",
    "install_peer",
    "peers_dir",
    "require_peer",
]
