"""A worker process serving one model variant, resizable in place (same PID, next batch).

Contract (other areas build on it):

    h = WorkerHandle.start("resnet18", cores=1.0)   # spawn, load, warm up; blocks until ready
    h.pid, h.variant, h.cores, h.mechanism           # "cgroup-v1" | "cgroup-v2" | "affinity"
    h.cold_start_s, h.cold_start_breakdown            # spawn + import + load + warm-up (s)
    h.input_shape, h.input_dtype                      # one sample, without the batch dim
    y = h.infer(batch)                                # blocking; thread-safe (serialized)
    y = await h.infer_async(batch)                    # asyncio; many workers, one loop
    h.resize(0.5)                                     # in place; returns the apply time (s)
    h.last_resize_to_batch_s                          # request -> end of first batch after it
    h.stop(); h.alive()                               # or: with WorkerHandle.start(...) as h:

Errors: `WorkerError` for a rejected batch (wrong shape/dtype: the worker answers with an error
and keeps serving); `WorkerDied` when the process is gone (e.g. SIGKILL mid-batch): every pending
and later call fails promptly with it, nothing hangs. Bad arguments to start/resize (unknown
variant, cores <= 0 or above the machine) raise TidalError naming the value.

IPC: two Unix socketpairs (sync and async) carrying the fixed framing of `tidal.dataplane.ipc`.
The async side registers the socket with the running event loop (`add_reader`), so responses
are parsed in a callback with no thread hop. Do not call the blocking `infer` from the event
loop's thread while async calls are pending on the same worker.
Inference: ONNX Runtime, `intra_op_num_threads = max_threads` (default: all CPUs available),
spinning off. The ONNX file comes from `tidal.models.onnx_cache.onnx_path` (exported in the
parent before the spawn; export time is reported as `export_s`, not part of the cold start).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import weakref
from typing import IO, Any

import numpy as np

from tidal.core.clock import Clock, MonotonicClock
from tidal.core.errors import TidalError
from tidal.dataplane import ipc
from tidal.dataplane.security import child_env
from tidal.dataplane.tensors import TensorSet
from tidal.dataplane.watchdog import proc_progress
from tidal.dataplane.worker_cpu import CpuController, CpuState, cpus_for, machine_cores

START_TIMEOUT_S = 300.0
_SOCK_BUF = 4 << 20
_placement = itertools.count()  # round-robin CPU placement across workers of this process


class WorkerError(TidalError):
    """The worker rejected a batch (shape/dtype) or the model failed on it; it keeps serving."""


class WorkerDied(TidalError):
    """The worker process is gone; the call cannot complete."""


def _check_cores(cores: float) -> float:
    total = machine_cores()
    if not (isinstance(cores, int | float) and math.isfinite(cores) and 0 < cores <= total):
        raise TidalError(f"cores {cores!r} out of range: this machine has {total:g} cores")
    return float(cores)


class _AsyncChannel:
    """The async side of a worker: one non-blocking socket bound to one event loop."""

    def __init__(self, sock: socket.socket, on_dead: Any) -> None:
        self.sock = sock
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending: dict[int, asyncio.Future[np.ndarray]] = {}
        self.buf = bytearray()
        # recv_into one reused buffer: `recv(1 << 20)` allocates (mmaps) 1 MiB per call and
        # cost ~17 us per small result here, against ~1.5 us for recv_into.
        self._rbuf = bytearray(1 << 20)
        self._rview = memoryview(self._rbuf)
        self.send_lock: asyncio.Lock | None = None
        self.dead: BaseException | None = None
        self.on_dead = on_dead

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.loop is loop:
            return
        if self.loop is not None:
            # Re-bound to a new loop (e.g. successive asyncio.run): drop the old loop's calls.
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.sock.fileno())
            self.fail_all(WorkerError("event loop changed while calls were pending"))
            self.buf.clear()
        self.loop = loop
        self.send_lock = asyncio.Lock()
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            n = self.sock.recv_into(self._rview)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        if not n:
            self.close_reader()
            self.on_dead()
            return
        self.buf += self._rview[:n]
        self._parse()

    def _parse(self) -> None:
        buf = self.buf
        pos = 0
        n = len(buf)
        while n - pos >= ipc.HEADER_SIZE:
            kind, code, ndim, req_id, nbytes, _aux = ipc.decode_header(buf, pos)
            end = pos + ipc.HEADER_SIZE + 8 * ndim + nbytes
            if end > n:
                break
            shape = ipc.decode_shape(buf, ndim, pos + ipc.HEADER_SIZE)
            payload = buf[end - nbytes : end]  # a bytearray slice is already a copy
            pos = end
            fut = self.pending.pop(req_id, None)
            if fut is None or fut.done():
                continue
            if kind == ipc.RESULT:
                fut.set_result(ipc.to_array(code, shape, payload))
            elif kind == ipc.RESULT_SET:
                try:
                    fut.set_result(TensorSet(ipc.decode_set(payload)))  # type: ignore[arg-type]
                except (ipc.FramingError, ValueError) as e:
                    fut.set_exception(WorkerError(f"bad result set: {e}"))
            else:
                fut.set_exception(WorkerError(payload.decode(errors="replace")))
        if pos:
            del buf[:pos]

    def close_reader(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.sock.fileno())

    def fail_all(self, exc: BaseException) -> None:
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done() and not fut.get_loop().is_closed():
                fut.set_exception(exc)


class WorkerHandle:
    """Parent-side handle of one worker process. See the module docstring for the contract."""

    pid: int
    variant: str
    cores: float
    mechanism: str
    cold_start_s: float
    input_shape: tuple[int, ...]
    input_dtype: np.dtype
    _clock: Clock
    _cpu: CpuController
    _proc: subprocess.Popen[bytes]
    _sync: socket.socket
    _reader: ipc.FrameReader
    _async: _AsyncChannel
    _stderr: IO[bytes]
    _finalizer: weakref.finalize

    def __init__(self) -> None:  # use WorkerHandle.start
        self._ids = itertools.count(1)
        self._sync_lock = threading.Lock()
        self._stopped = False
        self._dead_exc: WorkerDied | None = None
        self._resize_t: float | None = None
        self.last_resize_to_batch_s: float | None = None
        self.last_resize_apply_s: float | None = None
        self.last_compute_s: float = 0.0
        self.cold_start_breakdown: dict[str, float] = {}
        self.export_s = 0.0
        self.cpus: tuple[int, ...] = ()
        self.max_threads = 1

    # ----------------------------------------------------------------- lifecycle
    @classmethod
    def start(
        cls,
        variant: str,
        cores: float,
        *,
        max_threads: int | None = None,
        cpus: tuple[int, ...] | None = None,
        clock: Clock | None = None,
        cpu_weight: int | None = None,
    ) -> WorkerHandle:
        """Spawn a worker for `variant` with `cores` cores; block until loaded and warmed up.

        `cpus` pins the CPU set (default: ceil(cores) CPUs, round-robin across workers).
        `cpu_weight` (profiler only) raises the worker's CPU weight in a separate cgroup group
        `tidal-profile`, so other jobs on a shared machine disturb the measurement less.
        Raises TidalError (unknown variant, bad cores) or WorkerDied (the process failed).
        """
        from tidal.models.catalog import get_variant
        from tidal.models.onnx_cache import onnx_path

        spec = get_variant(variant)
        cores = _check_cores(cores)
        clk = clock or MonotonicClock()
        self = cls()
        self._clock = clk
        self.variant, self.cores = variant, cores
        self.input_shape, self.input_dtype = spec.input_shape, spec.input_dtype
        avail = len(os.sched_getaffinity(0))
        self.max_threads = max(1, min(max_threads or avail, 64))
        t0 = clk.now()
        path = onnx_path(variant)
        self.export_s = clk.now() - t0

        s_parent, s_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        a_parent, a_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (s_parent, s_child, a_parent, a_child):
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCK_BUF)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCK_BUF)
        # No tokens or other secrets in the worker: it runs user models (tidal.dataplane.security).
        env = child_env(
            extra={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        )
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        cmd = [
            sys.executable, "-m", "tidal.dataplane.worker_main",
            "--onnx", str(path), "--threads", str(self.max_threads),
            "--shape", json.dumps(list(spec.input_shape)), "--dtype", spec.input.dtype,
            "--sync-fd", str(s_child.fileno()), "--async-fd", str(a_child.fileno()),
        ]  # fmt: skip
        if variant == "noop":
            cmd.append("--echo")  # identity: measures the data plane, not ONNX Runtime
        t_spawn = clk.now()
        self._proc = subprocess.Popen(
            cmd,
            pass_fds=(s_child.fileno(), a_child.fileno()),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env=env,
            close_fds=True,
        )
        s_child.close()
        a_child.close()
        self.pid = self._proc.pid
        self._sync = s_parent
        self._reader = ipc.FrameReader(s_parent)
        self._async = _AsyncChannel(a_parent, self._on_async_dead)
        a_parent.setblocking(False)
        self._finalizer = weakref.finalize(self, _reap, self._proc, None, [s_parent, a_parent])
        # Cgroup + affinity before the model loads: ORT's threads inherit both.
        if cpu_weight is None:
            self._cpu = CpuController(self.pid)
        else:
            self._cpu = CpuController(self.pid, group="tidal-profile", weight=cpu_weight)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _reap, self._proc, self._cpu, [s_parent, a_parent])
        self.mechanism = self._cpu.mechanism
        self.cpus = cpus if cpus is not None else cpus_for(cores, next(_placement))
        try:
            self._cpu.apply(cores, self.cpus)
            s_parent.settimeout(START_TIMEOUT_S)
            kind, _c, _r, _a, _s, payload = self._reader.read()
            s_parent.settimeout(None)
            if kind != ipc.READY:
                raise ipc.FramingError(f"expected READY, got frame kind {kind}")
        except (OSError, EOFError, ipc.FramingError) as e:
            err = self._stderr_tail()
            self.stop(timeout=1.0)
            raise WorkerDied(f"worker for {variant!r} failed to start ({e}): {err}") from None
        t_ready = clk.now()
        info = json.loads(payload.decode())
        # Affinity again: every thread ORT created must carry the mask (they inherit it, but
        # this makes it true even for threads created before the first apply).
        self._cpu.set_affinity(self.cpus)
        self.cold_start_s = t_ready - t_spawn
        self.cold_start_breakdown = {
            "spawn_s": max(0.0, info["t_start"] - t_spawn),
            "import_s": info["import_s"],
            "load_s": info["load_s"],
            "warmup_s": info["warmup_s"],
            "total_s": self.cold_start_s,
        }
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit, kill it after `timeout` s, remove its cgroup. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        # if a blocking call holds the sync lock, terminate instead (the call gets WorkerDied)
        if not self._send_shutdown():
            with contextlib.suppress(OSError):
                self._proc.terminate()
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._async.close_reader()
        self._async.fail_all(WorkerDied(f"worker {self.pid} ({self.variant}) was stopped"))
        self._finalizer()
        with contextlib.suppress(Exception):
            self._stderr.close()

    def _send_shutdown(self) -> bool:
        """Send SHUTDOWN on the sync connection; False if the sync lock stayed busy.

        SHUTDOWN must not interleave with a frame another thread is sending, so it is sent
        under the sync lock, taken for at most 0.2 s. A closed connection is not an error."""
        if not self._sync_lock.acquire(timeout=0.2):
            return False
        try:
            with contextlib.suppress(OSError):
                ipc.send_frame(self._sync, ipc.encode_bytes(ipc.SHUTDOWN, 0, b""))
        finally:
            self._sync_lock.release()
        return True

    def __enter__(self) -> WorkerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def alive(self) -> bool:
        """True while the process runs and has not been stopped."""
        return not self._stopped and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker now (the watchdog found it sick): pending and later calls fail
        with WorkerDied at once; `stop()` still reaps it and removes its cgroup."""
        if self._proc.poll() is None:
            with contextlib.suppress(OSError):
                self._proc.kill()

    def progress(self) -> tuple[str, int, int] | None:
        """(state letter, CPU ticks, run-queue wait ns) of the worker process from /proc (the
        watchdog's probe); None once it exited."""
        if self._proc.poll() is not None:
            return None
        return proc_progress(self.pid)

    # ----------------------------------------------------------------- resize
    def resize(self, cores: float, cpus: tuple[int, ...] | None = None) -> float:
        """Change the allocation in place (same PID): quota = cores, CPU set = ceil(cores)
        CPUs, or exactly `cpus` when given (a cluster's placement authority chooses them).
        Effective on the next batch. Returns the seconds it took to apply; after the
        next batch completes, `last_resize_to_batch_s` holds request -> end of that batch."""
        cores = _check_cores(cores)
        if not self.alive():
            raise self._died()
        t0 = self._clock.now()
        n_new = math.ceil(cores - 1e-9)
        if cpus is not None and len(cpus) < n_new:
            raise TidalError(f"cpus {cpus!r} are fewer than the {n_new} that {cores:g} cores need")
        if cpus is None:
            cpus = self.cpus
            if len(cpus) != n_new:
                # Keep the first CPU of the current set so shrinking/growing stays local.
                from tidal.dataplane.worker_cpu import available_cpus

                avail = available_cpus()
                start = avail.index(cpus[0]) if cpus and cpus[0] in avail else 0
                cpus = cpus_for(cores, start)
        try:
            self._cpu.apply(cores, cpus)
        except (OSError, ProcessLookupError):
            raise self._died() from None
        self.cores, self.cpus = cores, cpus
        self.last_resize_apply_s = self._clock.now() - t0
        self._resize_t = t0
        return self.last_resize_apply_s

    def cpu_state(self) -> CpuState:
        """The quota and CPU sets in force, read back from the kernel (cgroup files, affinity)."""
        return self._cpu.read_back()

    def throttled_periods(self) -> int | None:
        """cgroup `nr_throttled` so far (None in the affinity fallback)."""
        return self._cpu.throttled()

    # ----------------------------------------------------------------- inference
    def _died(self, wait_s: float = 0.5) -> WorkerDied:
        """The WorkerDied of this worker (the exit code, once the process can be reaped)."""
        if self._dead_exc is None:
            code = self._proc.poll()
            if code is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = self._proc.wait(timeout=wait_s)
            what = "was stopped" if self._stopped else f"died (exit code {code})"
            exc = WorkerDied(f"worker {self.pid} ({self.variant}) {what}")
            if code is None and not self._stopped:
                return exc  # not reaped yet: a later call may report the exit code
            self._dead_exc = exc
        return self._dead_exc

    def _on_async_dead(self) -> None:
        self._async.dead = self._died(wait_s=0.05)  # called in the event loop: barely block
        self._async.fail_all(self._async.dead)

    def _encode(self, batch: np.ndarray | TensorSet, req_id: int) -> list[bytes | memoryview]:
        try:
            if isinstance(batch, TensorSet):
                return [ipc.encode_set(ipc.REQUEST_SET, req_id, batch.tensors)]
            if not isinstance(batch, np.ndarray):
                raise WorkerError(f"batch must be a numpy array, got {type(batch).__name__}")
            return ipc.encode_tensor(ipc.REQUEST, req_id, batch)
        except ipc.FramingError as e:
            raise WorkerError(str(e)) from None

    def _note_batch_done(self, compute_ns: int) -> None:
        self.last_compute_s = compute_ns / 1e9
        if self._resize_t is not None:
            self.last_resize_to_batch_s = self._clock.now() - self._resize_t
            self._resize_t = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (shape (b, *input_shape), dtype input_dtype); blocking."""
        if self._stopped:
            raise self._died()
        with self._sync_lock:
            req_id = next(self._ids)
            frame = self._encode(batch, req_id)
            try:
                ipc.send_frame(self._sync, frame)
                kind, code, rid, aux, shape, payload = self._reader.read()
            except (OSError, EOFError, ipc.FramingError):
                raise self._died() from None
        if kind == ipc.ERROR:
            raise WorkerError(payload.decode(errors="replace"))
        self._note_batch_done(aux)
        if kind == ipc.RESULT_SET:
            return TensorSet(ipc.decode_set(payload))  # type: ignore[return-value]
        return ipc.to_array(code, shape, payload)

    async def infer_async(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch from an asyncio event loop; concurrent calls are pipelined."""
        ch = self._async
        if ch.dead is not None or self._stopped:
            raise self._died()
        loop = asyncio.get_running_loop()
        ch.bind(loop)
        req_id = next(self._ids)
        frame = self._encode(batch, req_id)
        fut: asyncio.Future[np.ndarray] = loop.create_future()
        ch.pending[req_id] = fut
        try:
            sent = 0
            if len(frame) == 1 and not ch.send_lock.locked():  # type: ignore[union-attr]
                # Fast path: small frame, nobody mid-send: one non-blocking send.
                with contextlib.suppress(BlockingIOError):
                    sent = ch.sock.send(frame[0])
                frame = [] if sent == len(frame[0]) else [memoryview(frame[0])[sent:]]
            if frame:
                # Slow path, shielded: a caller cancelled mid-frame must not leave half a frame
                # on the stream (the worker would misread everything after it).
                send = asyncio.ensure_future(self._send_locked(loop, frame))
                send.add_done_callback(_consume_exception)
                await asyncio.shield(send)
        except OSError:
            ch.pending.pop(req_id, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # mark retrieved: the caller gets WorkerDied below
            self._on_async_dead()
            raise self._died() from None
        out = await fut
        self._note_batch_done(0)
        return out

    async def _send_locked(
        self, loop: asyncio.AbstractEventLoop, parts: list[bytes | memoryview]
    ) -> None:
        async with self._async.send_lock:  # type: ignore[union-attr]
            for part in parts:
                await loop.sock_sendall(self._async.sock, part)

    def _stderr_tail(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=2.0)
        with contextlib.suppress(Exception):
            self._stderr.seek(0)
            lines = self._stderr.read().decode(errors="replace").strip().splitlines()
            return " | ".join(lines[-3:]) or "no stderr"
        return "no stderr"

    def __repr__(self) -> str:
        return (
            f"WorkerHandle(variant={self.variant!r}, pid={self.pid}, cores={self.cores:g}, "
            f"mechanism={self.mechanism!r}, alive={self.alive()})"
        )


def _consume_exception(task: asyncio.Future[None]) -> None:
    """Mark a background send's exception as retrieved (its caller already got WorkerDied)."""
    if not task.cancelled():
        task.exception()


def _reap(
    proc: subprocess.Popen[bytes], cpu: CpuController | None, socks: list[socket.socket]
) -> None:
    """Finalizer: make sure the process is gone, close sockets, remove the cgroup."""
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()
    if proc.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2.0)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if cpu is not None:
        cpu.cleanup()
