"""The Ray substrate's direct data path: the gateway talks to a replica's worker process over
TCP with the data plane's frame codec (`tidal.dataplane.ipc`), as it talks to a local worker
over its socketpairs; the Ray actor only places the worker and owns its lifetime.

Start-up (`tidal.control.ray_substrate.RayExecutor` drives it):

1. The actor opens an :class:`Endpoint`: a listening TCP socket on ``host`` (127.0.0.1 when
   the gateway runs on the same kernel, else the node's address, only when allowed) and port
   0, with a fresh 32-byte token. It returns (port, token) to the gateway over Ray.
2. The gateway connects twice (`open_channels`): a sync and an async connection, each
   sending the token and its role byte. The kernel queues both in the listen backlog.
3. The actor accepts them (:meth:`Endpoint.accept`): a connection without the right token
   (``hmac.compare_digest``) is closed and does not count; after the two the listener is
   closed, so the port serves one gateway once. It then spawns the worker with the two
   accepted sockets as its ``--sync-fd``/``--async-fd`` (:class:`WorkerProcess`), applies
   the cgroup quota and CPU pins, and returns. The worker never sees the token, and its
   environment has no secrets (`tidal.dataplane.security.child_env`).
4. The worker's READY frame reaches the gateway directly (:meth:`DirectWorker.wait_ready`).

From then on every batch is one frame each way between the gateway and the worker: no Ray
call, no pickling (the frames are the codec's; nothing received is unpickled), no relay
process. Ray calls remain for resizes (the cgroup and pins are applied where the process
runs), the kernel read-back, kill and stop.

Lifetimes: the worker exits when the gateway's connections close (worker_main's contract)
and, by ``PR_SET_PDEATHSIG``, when its actor dies (a killed actor leaves no worker serving).
The frames are not encrypted: across hosts they travel in the clear on the cluster network
(docs/deploy.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hmac
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import IO, Any

from tidal.control.ray_connect import _ray, unnice
from tidal.core.clock import Clock, MonotonicClock
from tidal.core.errors import TidalError
from tidal.core.sockio import recv_exactly
from tidal.dataplane import ipc
from tidal.dataplane.security import child_env
from tidal.dataplane.watchdog import proc_progress
from tidal.dataplane.worker import _SOCK_BUF, WorkerDied, WorkerHandle, _AsyncChannel
from tidal.dataplane.worker_cpu import CpuController

TOKEN_BYTES = 32
ROLE_SYNC, ROLE_ASYNC = b"S", b"A"
HELLO_TIMEOUT_S = 5.0
"""How long an accepted connection may take to send its token before it is dropped."""
_PR_SET_PDEATHSIG = 1


def kernel_id() -> dict[str, str]:
    """This process's kernel boot id and its network and pid namespaces: the same boot id and
    network namespace on both sides mean 127.0.0.1 reaches the other side; the same boot id
    and pid namespace mean a pid names the same process ('' where there is none)."""
    out = {"boot": "", "net": "", "pid": ""}
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as f:
        out["boot"] = f.read().strip()
    for ns in ("net", "pid"):
        with contextlib.suppress(OSError):
            out[ns] = os.readlink(f"/proc/self/ns/{ns}")
    return out


def shares(a: dict[str, str], b: dict[str, str], ns: str) -> bool:
    """True when `a` and `b` (two `kernel_id()`s) run on one kernel in one `ns` namespace."""
    return bool(a.get("boot")) and a.get("boot") == b.get("boot") and a.get(ns) == b.get(ns)


def _tune(sock: socket.socket) -> None:
    """Small frames go out at once (no Nagle delay), with the worker's buffer sizes."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCK_BUF)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCK_BUF)


# ------------------------------------------------------------------ actor side
class Endpoint:
    """A one-shot listening socket for one worker's two connections (see the module
    docstring). `host` is where it binds: 127.0.0.1 unless the caller decided otherwise."""

    def __init__(self, host: str = "127.0.0.1", clock: Clock | None = None) -> None:
        self.clock: Clock = clock or MonotonicClock()
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self.sock = socket.create_server((host, 0), backlog=8)
        self.host = host
        self.port: int = self.sock.getsockname()[1]

    def accept(self, timeout_s: float = 30.0) -> tuple[socket.socket, socket.socket]:
        """The (sync, async) connections that presented the token; TidalError after
        `timeout_s` without both. The listener is closed either way."""
        got: dict[bytes, socket.socket] = {}
        deadline = self.clock.now() + timeout_s
        try:
            while len(got) < 2:
                left = deadline - self.clock.now()
                if left <= 0:
                    raise TidalError(
                        f"worker endpoint {self.host}:{self.port}: the gateway did not connect "
                        f"within {timeout_s:g} s ({len(got)} of 2 connections)"
                    )
                self.sock.settimeout(left)
                try:
                    conn, _peer = self.sock.accept()
                except TimeoutError:
                    continue
                role = self._hello(conn)
                if role is None or role in got:
                    conn.close()
                    continue
                got[role] = conn
        except BaseException:
            for c in got.values():
                c.close()
            raise
        finally:
            self.sock.close()
        for c in got.values():
            c.settimeout(None)
            _tune(c)
        return got[ROLE_SYNC], got[ROLE_ASYNC]

    def _hello(self, conn: socket.socket) -> bytes | None:
        """The role of a connection that sent the token, else None."""
        conn.settimeout(HELLO_TIMEOUT_S)
        try:
            hello = bytes(recv_exactly(conn, TOKEN_BYTES + 1))
        except (OSError, EOFError):
            return None
        token, role = hello[:TOKEN_BYTES], hello[TOKEN_BYTES:]
        if not hmac.compare_digest(token, self.token) or role not in (ROLE_SYNC, ROLE_ASYNC):
            return None
        return role

    def close(self) -> None:
        self.sock.close()


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: no dlopen between fork and exec


def _die_with_parent(parent: int) -> None:  # pragma: no cover - runs in the forked child
    """SIGKILL this process when its parent (the actor) dies; exit now if it already did."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


class WorkerProcess:
    """The actor's side of one worker process: spawn, cgroup quota and pins, stop. The data
    sockets were handed to the process; this side keeps no copy of them."""

    def __init__(
        self,
        variant: str,
        cores: float,
        cpus: tuple[int, ...],
        sync: socket.socket,
        asock: socket.socket,
        clock: Clock | None = None,
    ) -> None:
        from tidal.models.catalog import get_variant
        from tidal.models.onnx_cache import onnx_path

        spec = get_variant(variant)
        path = onnx_path(variant)  # exported here, before the spawn (not part of the cold start)
        threads = max(1, min(len(os.sched_getaffinity(0)), 64))
        env = child_env(
            extra={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        )
        args = {
            "--onnx": str(path),
            "--threads": str(threads),
            "--shape": json.dumps(list(spec.input_shape)),
            "--dtype": spec.input.dtype,
            "--sync-fd": str(sync.fileno()),
            "--async-fd": str(asock.fileno()),
        }
        argv = [sys.executable, "-m", "tidal.dataplane.worker_main"]
        argv += [x for kv in args.items() for x in kv]
        if variant == "noop":
            argv.append("--echo")
        self.variant = variant
        self.clock: Clock = clock or MonotonicClock()
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        die = functools.partial(_die_with_parent, os.getpid())
        try:
            self.proc = subprocess.Popen(
                argv,
                pass_fds=(sync.fileno(), asock.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                env=env,
                preexec_fn=die,  # noqa: PLW1509 (one prctl, no lock taken)
            )
        finally:
            sync.close()  # the worker holds them now
            asock.close()
        self.pid = self.proc.pid
        self._lock = threading.Lock()
        self._stopped = False
        # Cgroup + affinity before the model loads: ORT's threads inherit both.
        self.cpu = CpuController(self.pid)
        self.mechanism = self.cpu.mechanism
        self.cores, self.cpus = cores, cpus
        try:
            self.cpu.apply(cores, cpus)
        except OSError as e:
            tail = self.stderr_tail()
            self.stop(timeout=1.0)
            raise WorkerDied(f"worker for {variant!r} exited at start ({e}): {tail}") from None

    def settle(self) -> None:
        """After READY: the pins again on every thread ORT created."""
        with contextlib.suppress(OSError):
            self.cpu.set_affinity(self.cpus)

    def resize(self, cores: float, cpus: tuple[int, ...]) -> float:
        """Quota and pins in place (same PID); the seconds it took. WorkerDied if gone."""
        t0 = self.clock.now()
        try:
            self.cpu.apply(cores, cpus)
        except (OSError, ProcessLookupError):
            raise WorkerDied(f"worker {self.pid} ({self.variant}) is gone") from None
        self.cores, self.cpus = cores, cpus
        return self.clock.now() - t0

    def cpu_state(self) -> dict[str, Any]:
        """The quota and CPU sets in force, read back from the kernel."""
        st = self.cpu.read_back()
        return {
            "mechanism": st.mechanism,
            "quota_cores": st.quota_cores,
            "cpus": list(st.cpus),
            "threads_agree": st.threads_agree,
            "pid": self.pid,
        }

    def kill(self) -> None:
        """SIGKILL now (the gateway's watchdog found it sick); its connections then close."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()

    def stderr_tail(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=2.0)
        with contextlib.suppress(Exception):
            self._stderr.seek(0)
            lines = self._stderr.read().decode(errors="replace").strip().splitlines()
            return " | ".join(lines[-3:]) or "no stderr"
        return "no stderr"

    def stop(self, timeout: float = 5.0) -> None:
        """Wait for the exit the gateway asked for (SHUTDOWN, or its connections closed);
        SIGTERM then SIGKILL after `timeout` s; remove the cgroup. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.cpu.cleanup()
        with contextlib.suppress(Exception):
            self._stderr.close()


# ------------------------------------------------------------------ gateway side
def open_channels(
    host: str, port: int, token: bytes, timeout_s: float = 10.0
) -> tuple[socket.socket, socket.socket]:
    """The (sync, async) connections to a worker endpoint, each having sent the token."""
    out: list[socket.socket] = []
    try:
        for role in (ROLE_SYNC, ROLE_ASYNC):
            s = socket.create_connection((host, port), timeout=timeout_s)
            out.append(s)
            _tune(s)
            s.sendall(token + role)
            s.settimeout(None)
    except OSError as e:
        for s in out:
            s.close()
        raise TidalError(f"cannot connect to the worker endpoint {host}:{port}: {e}") from None
    return out[0], out[1]


class DirectWorker(WorkerHandle):
    """The gateway's end of a worker process a Ray actor owns: WorkerHandle's data path
    (`infer`, pipelined `infer_async`, the frame codec) over the two TCP connections. The
    process itself (resize, kill, stop) belongs to the actor; this side only closes its
    connections, asks for SHUTDOWN, and probes /proc when it shares the worker's kernel and
    pid namespace (`local_pid`)."""

    def __init__(self) -> None:  # use DirectWorker.attach
        super().__init__()
        self.local_pid = False
        self.where = ""
        self.on_kill: Callable[[], None] | None = None

    @classmethod
    def attach(
        cls,
        variant: str,
        cores: float,
        sync: socket.socket,
        asock: socket.socket,
        *,
        where: str = "",
        local_pid: bool = False,
        on_kill: Callable[[], None] | None = None,
        clock: Clock | None = None,
    ) -> DirectWorker:
        from tidal.models.catalog import get_variant

        spec = get_variant(variant)
        self = cls()
        self._clock = clock or MonotonicClock()
        self.variant, self.cores, self.where = variant, cores, where
        self.input_shape, self.input_dtype = spec.input_shape, spec.input_dtype
        self.local_pid, self.on_kill = local_pid, on_kill
        self.pid = 0
        self.mechanism = "remote"
        self.cold_start_s = 0.0
        self._sync = sync
        self._reader = ipc.FrameReader(sync)
        self._async = _AsyncChannel(asock, self._on_async_dead)
        asock.setblocking(False)
        return self

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        """The worker's READY object (pid, timings); WorkerDied if it closed first."""
        self._sync.settimeout(timeout_s)
        try:
            kind, _c, _r, _a, _s, payload = self._reader.read()
        except (OSError, EOFError, ipc.FramingError) as e:
            self._close()
            raise WorkerDied(f"worker for {self.variant!r} {self.where} failed: {e}") from None
        finally:
            with contextlib.suppress(OSError):
                self._sync.settimeout(None)
        if kind != ipc.READY:
            self._close()
            raise WorkerDied(f"worker for {self.variant!r}: expected READY, got kind {kind}")
        info: dict[str, Any] = json.loads(payload.decode())
        self.pid = int(info["pid"])
        return info

    def _died(self, wait_s: float = 0.5) -> WorkerDied:
        if self._dead_exc is None:
            what = "was stopped" if self._stopped else "closed its connection"
            self._dead_exc = WorkerDied(f"worker {self.pid} ({self.variant}) {self.where} {what}")
        return self._dead_exc

    def alive(self) -> bool:
        return not self._stopped and self._async.dead is None

    def progress(self) -> tuple[str, int, int] | None:
        """The watchdog's /proc probe, only where this pid names the worker (same kernel and
        pid namespace); elsewhere None: the overdue rule alone judges its batches."""
        return proc_progress(self.pid) if self.local_pid and self.pid and self.alive() else None

    def kill(self) -> None:
        """SIGKILL through the owner (`on_kill`: the actor's kill); its connections close."""
        if self.on_kill is not None and self.alive():
            self.on_kill()

    def resize(self, cores: float, cpus: tuple[int, ...] | None = None) -> float:
        raise TidalError(
            f"{self!r}: the worker's cgroup is applied where it runs; resize it through its "
            "owner (RayExecutor.resize asks the actor)"
        )

    def cpu_state(self) -> Any:
        raise TidalError(f"{self!r}: read the kernel's state through its owner (the actor)")

    def throttled_periods(self) -> int | None:
        return None  # the cgroup is on the worker's node, read by its actor

    def stop(self, timeout: float = 5.0) -> None:
        """SHUTDOWN on the sync connection, then close both (the worker exits on either).
        Idempotent; the actor waits for the exit and removes the cgroup."""
        if self._stopped:
            return
        self._stopped = True
        self._send_shutdown()  # a busy sync lock: closing the connections ends the worker
        self._close()

    def _close(self) -> None:
        self._async.close_reader()
        self._async.fail_all(self._died())
        for s in (self._sync, self._async.sock):
            with contextlib.suppress(OSError):
                s.close()

    def __repr__(self) -> str:
        return f"DirectWorker(variant={self.variant!r}, pid={self.pid}, {self.where})"


# ------------------------------------------------------------------ the actor
class ReplicaActor:
    """Body of a replica actor: places one worker process on its node and owns its lifetime
    (start, resize in place, kernel read-back, kill, stop). Batches never pass through it:
    the gateway is connected to the worker (see the module docstring)."""

    def __init__(self, variant: str = "") -> None:
        self.variant = variant  # '' for a standby: `start` names it
        self.endpoint: Endpoint | None = None
        self.worker: WorkerProcess | None = None
        self.nice_error = unnice()  # Ray's nice 15 off (the worker inherits the actor's)
        if self.nice_error is not None:
            print(f"tidal replica actor: {self.nice_error}", file=sys.stderr)

    def where(self) -> dict[str, Any]:
        """Node id, usable CPU ids, node address and `kernel_id()` of this actor's process:
        raylets on one kernel share its CPU ids (the book spreads their pins over them)."""
        ray = _ray()
        return {
            "node": ray.get_runtime_context().get_node_id(),
            "cpus": sorted(os.sched_getaffinity(0)),
            "ip": ray.util.get_node_ip_address(),
            "kernel": kernel_id(),
            "nice": os.getpriority(os.PRIO_PROCESS, 0),
        }

    def listen(self, host: str) -> tuple[int, bytes]:
        """Open the worker's endpoint on `host`: (port, token) for the gateway."""
        if self.endpoint is not None:
            self.endpoint.close()
        self.endpoint = Endpoint(host)
        return self.endpoint.port, self.endpoint.token

    def start(self, cores: float, cpus: list[int], variant: str = "") -> dict[str, Any]:
        """Accept the gateway's two connections, spawn the worker on them, pin it."""
        if self.endpoint is None:
            raise TidalError("start before listen: the worker has no endpoint")
        self.variant = variant or self.variant
        ep, self.endpoint = self.endpoint, None
        sync, asock = ep.accept()
        self.worker = WorkerProcess(self.variant, cores, tuple(cpus), sync, asock)
        return {
            "pid": self.worker.pid,
            "mechanism": self.worker.mechanism,
            # PR_SET_PDEATHSIG fires when the spawning thread ends: Ray runs a
            # max_concurrency=1 actor's methods on its main thread.
            "main_thread": threading.current_thread() is threading.main_thread(),
        }

    def _worker(self) -> WorkerProcess:
        if self.worker is None:
            raise WorkerDied(f"replica actor of {self.variant!r} has no worker")
        return self.worker

    def settle(self) -> None:
        self._worker().settle()

    def resize(self, cores: float, cpus: list[int]) -> float:
        return self._worker().resize(cores, tuple(cpus))

    def cpu_state(self) -> dict[str, Any]:
        """The quota and CPU sets in force, read back from the kernel inside the actor."""
        return self._worker().cpu_state()

    def kill_worker(self) -> None:
        self._worker().kill()

    def stderr_tail(self) -> str:
        return self._worker().stderr_tail() if self.worker is not None else "no worker"

    def stop(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
        if self.worker is not None:
            self.worker.stop()
