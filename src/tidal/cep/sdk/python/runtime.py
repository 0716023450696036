"""The operator runtime: the loop every Python operator process runs.

Environment contract (the same as CEPless, plus Tidal's additions), see `RuntimeConfig`:
``TIDAL_CEP_STORE`` (store URL), ``TIDAL_CEP_IN`` / ``TIDAL_CEP_OUT`` (queue keys),
``TIDAL_CEP_BATCH`` (B), ``TIDAL_CEP_FLUSH_MS`` (F, used by hosts), ``TIDAL_CEP_BACKOFF_MS``
and ``TIDAL_CEP_BACKOFF_MAX_MS`` (linear back-off), ``TIDAL_CEP_MODE`` (faithful | blob),
``TIDAL_CEP_CODEC`` (json | packed), ``TIDAL_CEP_OPERATOR`` (name), ``TIDAL_CEP_INSTANCE``,
``TIDAL_CEP_SOURCE`` (operator file), ``TIDAL_CEP_MAX_FAILURES`` (N),
``TIDAL_CEP_STANDBY`` (1: wait for a handover before consuming), ``TIDAL_CEP_POP``
(commit | pop), ``TIDAL_CEP_CHECKPOINT_EVERY`` (K > 0: keyed state survives crashes).

Crash recovery of keyed state (K > 0, events): every commit also appends the consumed frames
to ``cep:<op>:log``; the first commit after K events were consumed since the last checkpoint
instead stores a snapshot in ``cep:<op>:checkpoint`` and clears the log, in the same
transaction, so a restart replays fewer than K events (fewer than 2K right after a hot
update, whose new instance checkpoints at its second commit). A restarted instance restores
the checkpoint and replays the log through `process` (discarding outputs, already
committed): its state is exactly that of the crashed one, for deterministic operators.

Queue protocol, per batch:
1. pop: MULTI; LRANGE in 0 B-1; INCR tries; GET isolate; EXEC. With ``TIDAL_CEP_POP=pop``
   the LTRIM happens here as in CEPless (MULTI; LRANGE in 0 B-1; LTRIM in B -1; EXEC) and a
   crash loses the batch; by default (``commit``) the LTRIM moves into step 3.
2. process the events before the first control frame.
3. commit: MULTI; RPUSH out <results>; LTRIM in n -1; DEL tries; EXEC: results and the
   consumption are one transaction, so a crash before it redelivers the batch to the
   restarted operator and a crash never duplicates results.
An empty pop backs off linearly (step, 2*step, ... up to the maximum).

A redelivered batch (tries > 1) is replayed one event at a time; an event that failed N
times is parked in ``cep:<op>:parked`` with the reason, and the stream goes on.

Hand-over (hot update): the manager pushes a barrier frame naming the new instance into the
in queue. The operator processes the events before it and, in the same commit, pushes the
"go" signal carrying its state snapshot (``S`` + bytes) to the new instance; then it exits.
The new instance, started earlier and ready (it pushed ``cep:<inst>:ready``), blocked on
``cep:<inst>:go``; it restores (unless its version declares empty state) and consumes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tidal.cep.codec import HANDOVER, Codec, is_control
from tidal.cep.sdk.python.operator import Operator, load_operator
from tidal.cep.sockstore import decode, encode
from tidal.cep.store import Op, Store, open_store
from tidal.core.clock import Clock, MonotonicClock
from tidal.core.errors import TidalError


def keys(op: str) -> dict[str, str]:
    """Store keys of operator `op` (shared by all its instances)."""
    return {
        "tries": f"cep:{op}:tries",
        "isolate": f"cep:{op}:isolate",
        "parked": f"cep:{op}:parked",
        "last_output": f"cep:{op}:last_output",
        "checkpoint": f"cep:{op}:checkpoint",
        "log": f"cep:{op}:log",
    }


def inst_keys(inst: str) -> dict[str, str]:
    """Store keys of one operator instance (process)."""
    return {
        "ready": f"cep:{inst}:ready",
        "go": f"cep:{inst}:go",
        "state": f"cep:{inst}:state",
        "first_output": f"cep:{inst}:first_output",
        "prev_last_output": f"cep:{inst}:prev_last_output",
        "handover_at": f"cep:{inst}:handover_at",
        "swapped": f"cep:{inst}:swapped",
    }


@dataclass
class RuntimeConfig:
    """The operator's environment contract (see module docstring)."""

    store: str
    in_key: str
    out_key: str
    operator: str
    instance: str
    batch: int = 1000
    flush_ms: float = 1.0
    backoff_ms: float = 0.1
    backoff_max_ms: float = 2.0
    mode: str = "blob"
    codec: str = "json"
    source: str = ""
    max_failures: int = 3
    standby: bool = False
    pop: str = "commit"
    checkpoint_every: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise TidalError(f"TIDAL_CEP_BATCH must be >= 1, got {self.batch}")
        if self.mode not in ("faithful", "blob"):
            raise TidalError(f"TIDAL_CEP_MODE must be faithful or blob, got {self.mode!r}")
        if self.pop not in ("commit", "pop"):
            raise TidalError(f"TIDAL_CEP_POP must be commit or pop, got {self.pop!r}")
        if self.checkpoint_every < 0:
            raise TidalError(
                f"TIDAL_CEP_CHECKPOINT_EVERY must be >= 0, got {self.checkpoint_every}"
            )
        if self.max_failures < 1:
            raise TidalError(f"TIDAL_CEP_MAX_FAILURES must be >= 1, got {self.max_failures}")

    def to_env(self) -> dict[str, str]:
        env = {
            "TIDAL_CEP_STORE": self.store,
            "TIDAL_CEP_IN": self.in_key,
            "TIDAL_CEP_OUT": self.out_key,
            "TIDAL_CEP_OPERATOR": self.operator,
            "TIDAL_CEP_INSTANCE": self.instance,
            "TIDAL_CEP_BATCH": str(self.batch),
            "TIDAL_CEP_FLUSH_MS": str(self.flush_ms),
            "TIDAL_CEP_BACKOFF_MS": str(self.backoff_ms),
            "TIDAL_CEP_BACKOFF_MAX_MS": str(self.backoff_max_ms),
            "TIDAL_CEP_MODE": self.mode,
            "TIDAL_CEP_CODEC": self.codec,
            "TIDAL_CEP_SOURCE": self.source,
            "TIDAL_CEP_MAX_FAILURES": str(self.max_failures),
            "TIDAL_CEP_STANDBY": "1" if self.standby else "0",
            "TIDAL_CEP_POP": self.pop,
            "TIDAL_CEP_CHECKPOINT_EVERY": str(self.checkpoint_every),
        }
        env.update(self.extra)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RuntimeConfig:
        def need(k: str) -> str:
            if k not in env:
                raise TidalError(f"operator environment lacks {k}")
            return env[k]

        try:
            return cls(
                store=need("TIDAL_CEP_STORE"),
                in_key=need("TIDAL_CEP_IN"),
                out_key=need("TIDAL_CEP_OUT"),
                operator=need("TIDAL_CEP_OPERATOR"),
                instance=env.get("TIDAL_CEP_INSTANCE", "i0"),
                batch=int(env.get("TIDAL_CEP_BATCH", "1000")),
                flush_ms=float(env.get("TIDAL_CEP_FLUSH_MS", "1")),
                backoff_ms=float(env.get("TIDAL_CEP_BACKOFF_MS", "0.1")),
                backoff_max_ms=float(env.get("TIDAL_CEP_BACKOFF_MAX_MS", "2")),
                mode=env.get("TIDAL_CEP_MODE", "blob"),
                codec=env.get("TIDAL_CEP_CODEC", "json"),
                source=env.get("TIDAL_CEP_SOURCE", ""),
                max_failures=int(env.get("TIDAL_CEP_MAX_FAILURES", "3")),
                standby=env.get("TIDAL_CEP_STANDBY", "0") == "1",
                pop=env.get("TIDAL_CEP_POP", "commit"),
                checkpoint_every=int(env.get("TIDAL_CEP_CHECKPOINT_EVERY", "0")),
            )
        except ValueError as e:
            raise TidalError(f"bad operator environment: {e}") from None


SHM_MIN_BYTES = 64 * 1024
IDLE_POLLS = 2  # empty pops (with back-off) before an idle operator blocks on its in queue
IDLE_BLOCK_S = 0.05  # one blocking wait; a stop (SIGTERM) is noticed within it


def encode_go(state: bytes, new_inst: str, after: list[bytes]) -> bytes:
    """The go signal: ``T`` + tagged [kind, state or path, frames after the barrier].

    A snapshot over `SHM_MIN_BYTES` goes through a file in /dev/shm (old and new instances
    run on the same host as their node manager), so the queue store moves a path, not MBs.
    The frames after the barrier let the new instance start without a pop round trip; they
    stay at the head of the in queue until it commits them.
    """
    out = bytearray(b"T")
    if len(state) > SHM_MIN_BYTES:
        d = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        fd, path = tempfile.mkstemp(prefix=f"tidal-cep-{new_inst}-", suffix=".state", dir=d)
        with os.fdopen(fd, "wb") as f:
            f.write(state)
        encode(["F", path, after], out)
    else:
        encode(["S", state, after], out)
    return bytes(out)


def decode_go(go: bytes) -> tuple[bytes | None, list[bytes]]:
    """(state or None for empty, prefetched frames) from a go signal (see `encode_go`);
    also accepts the Node SDK's ``S`` + JSON and ``E`` (empty)."""
    if go[:1] == b"S":
        return go[1:], []
    if go[:1] != b"T":
        return None, []
    kind, val, after = decode(go, 1)[0]
    if kind == "F":
        path = str(val)
        ok_dirs = {"/dev/shm", tempfile.gettempdir()}
        if not os.path.basename(path).startswith("tidal-cep-") or (
            os.path.dirname(path) not in ok_dirs
        ):
            raise TidalError(f"refusing state file {path!r}")
        with open(path, "rb") as f:
            state = f.read()
        os.unlink(path)
        return state, [bytes(x) for x in after]
    return bytes(val), [bytes(x) for x in after]


def _split(codec: Codec, frame: bytes) -> list[bytes]:
    """Split one data frame into single-event frames (for replay one event at a time)."""
    batch = codec.decode([frame])
    return codec.encode(batch, "faithful")


class OperatorRuntime:
    """Runs one operator instance against a store until stopped or handed over."""

    def __init__(
        self,
        cfg: RuntimeConfig,
        op: Operator,
        store: Store,
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cfg = cfg
        self.op = op
        self.store = store
        self.clock = clock or MonotonicClock()
        self.sleep = sleep
        self.codec = Codec(cfg.codec)  # type: ignore[arg-type]
        self.k = keys(cfg.operator)
        self.ik = inst_keys(cfg.instance)
        self.stop = threading.Event()
        self.handed_over = False
        self.processed = 0
        self._last_output_t: float | None = None
        self._first_output_done = False
        self._tracing = os.environ.get("TIDAL_CEP_TRACE") == "1"
        self._prefetch: list[bytes] = []
        self._since_ckpt = 0  # events consumed since the last checkpoint
        self._force_ckpt = 0  # > 0: checkpoint at that many commits from now
        self._last_n = 0

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Readiness signal, then (standby) wait for the hand-over and restore state."""
        if self.cfg.standby:
            # warm the restore path (lazy imports, allocations) on the still-empty state
            self.op.restore(self.op.snapshot())
        if not self.cfg.standby:
            self._recover()
        self.store.push(self.ik["ready"], [b"1"])
        if not self.cfg.standby:
            return
        while not self.stop.is_set():
            go = self.store.blpop(self.ik["go"], 0.5)
            if go is None:
                continue
            self._trace("go")
            state, self._prefetch = decode_go(go)
            if state is not None and not self.op.empty_state:
                self.op.restore(state)
            self._trace("restored")
            if self.checkpointing:
                if self.op.empty_state:  # the old checkpoint + log no longer describe us
                    self.store.execute(
                        [("set", self.k["checkpoint"], self.op.snapshot()), ("del", self.k["log"])]
                    )
                else:  # the old checkpoint + log equal the restored state: keep logging on
                    self._force_ckpt = 2  # them; our own checkpoint at our 2nd commit (off
            return  # the hand-over's critical path)

    @property
    def checkpointing(self) -> bool:
        return self.cfg.checkpoint_every > 0 and self.cfg.pop == "commit"

    def _recover(self) -> None:
        """After a crash: restore the last checkpoint and replay the events consumed since
        (outputs discarded: they were committed already), so keyed state is exact."""
        if not self.checkpointing:
            return
        ckpt, log = self.store.execute(
            [("get", self.k["checkpoint"]), ("lrange", self.k["log"], 0, -1)]
        )
        if ckpt is None and not log:
            return
        if ckpt is not None:
            self.op.restore(ckpt)
        if log:
            self._process(list(log))
        self._trace(f"recovered from a checkpoint and {len(log)} logged frames")

    def _trace(self, what: str) -> None:
        if self._tracing:
            print(
                f"tidal-cep {self.cfg.instance} {what} t={self.clock.now():.6f}",
                file=sys.stderr,
                flush=True,
            )

    def run(self) -> None:
        """The main loop; returns on stop or after handing over."""
        self.start()
        cfg = self.cfg
        empties = 0
        tries_op: Op = ("incr", self.k["tries"])
        while not self.stop.is_set():
            if self._prefetch:  # the frames after the barrier, handed over with the state
                frames, self._prefetch = self._prefetch, []
                self._batch(frames)
                if self.handed_over:
                    return
                continue
            if cfg.pop == "pop":
                frames, _ = self.store.execute(
                    [("lrange", cfg.in_key, 0, cfg.batch - 1), ("ltrim", cfg.in_key, cfg.batch, -1)]
                )
                tries, isolate = 1, 0
            else:
                frames, t, iso = self.store.execute(
                    [("lrange", cfg.in_key, 0, cfg.batch - 1), tries_op, ("get", self.k["isolate"])]
                )
                tries = 1 if t is True else int(t)
                isolate = int(iso or 0)
            if not frames:
                empties += 1
                tries_op = ("set", self.k["tries"], b"1")
                if empties <= IDLE_POLLS:
                    self.sleep(min(cfg.backoff_ms * empties, cfg.backoff_max_ms) / 1000.0)
                else:  # idle: block until the host pushes (no polling delay, no CPU burned)
                    self.store.wait(cfg.in_key, IDLE_BLOCK_S)
                continue
            if self._tracing and not self._first_output_done:
                self._trace(f"pop {len(frames)} frames after {empties} empty polls")
            empties = 0
            tries_op = ("incr", self.k["tries"])
            if cfg.pop == "commit" and (tries > 1 or isolate > 0):
                # first redelivery of a failed batch: go one event at a time through all of it
                self._replay_head(frames[0], tries, isolate or len(frames))
                continue
            self._batch(frames)
            if self.handed_over:
                return

    # -- one batch ----------------------------------------------------------------------
    def _batch(self, frames: list[bytes]) -> None:
        cut = len(frames)
        ctrl: bytes | None = None
        for i, f in enumerate(frames):
            if is_control(f):
                cut, ctrl = i, f
                break
        data = frames[:cut]
        outs, parked = self._process(data)
        consumed = cut + (1 if ctrl is not None else 0)
        ops = self._commit_ops(outs, consumed, parked, data)
        # A barrier naming this very instance is stale (its old owner died): just consume it.
        target = ctrl[len(HANDOVER) :].decode() if ctrl and ctrl.startswith(HANDOVER) else None
        after = frames[consumed:]
        if self.cfg.pop == "pop" and after:  # popped past a control frame: back to the head
            ops.append(("lpush", self.cfg.in_key, list(reversed(after))))
            after = []
        if target is not None and target != self.cfg.instance:
            ops += self._handover_ops(target, after)
            self._trace("handover")
        self.store.execute(ops)
        self.processed += sum(self.codec.count(f) for f in data)
        if target is not None and target != self.cfg.instance:
            self.handed_over = True

    def _process(self, frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
        if not frames:
            return [], []
        batch = self.codec.decode(frames)
        self._last_n = len(batch)
        parked: list[bytes] = []
        if isinstance(batch, list) and self.op.required:
            good = []
            for ev in batch:
                missing = [f for f in self.op.required if not isinstance(ev, dict) or f not in ev]
                if missing:
                    reason = f"event is missing field {missing[0]!r}"
                    parked.append(json.dumps({"event": ev, "reason": reason}).encode())
                else:
                    good.append(ev)
            batch = good
        out = self.op.process(batch)
        if isinstance(out, np.ndarray) or isinstance(batch, np.ndarray):
            codec = Codec("packed", out.dtype if isinstance(out, np.ndarray) else None)
        else:
            codec = self.codec
        b = self.cfg.batch  # result frames hold at most B events, as the host's frames do
        out_frames: list[bytes] = []
        for i in range(0, len(out), b):
            out_frames += codec.encode(out[i : i + b], self.cfg.mode)  # type: ignore[arg-type]
        return out_frames, parked

    def _commit_ops(
        self, outs: list[bytes], consumed: int, parked: list[bytes], data: list[bytes]
    ) -> list[Op]:
        cfg = self.cfg
        ops: list[Op] = [("rpush", cfg.out_key, outs)]
        if cfg.pop == "commit":
            ops += [("ltrim", cfg.in_key, consumed, -1), ("del", self.k["tries"])]
        if self.checkpointing and data:
            # state = checkpoint + the logged events since, atomically with the consumption;
            # a checkpoint once K events were consumed since the last one (replay < K events)
            self._since_ckpt += self._last_n
            forced = False
            if self._force_ckpt:
                self._force_ckpt -= 1
                forced = self._force_ckpt == 0
            if forced or self._since_ckpt >= cfg.checkpoint_every:
                ops += [("set", self.k["checkpoint"], self.op.snapshot()), ("del", self.k["log"])]
                self._since_ckpt = 0
            else:
                ops.append(("rpush", self.k["log"], data))
        if parked:
            ops.append(("rpush", self.k["parked"], parked))
        if outs:
            now = self.clock.now()
            self._last_output_t = now
            ops.append(("set", self.k["last_output"], repr(now).encode()))
            if not self._first_output_done:
                self._trace("first output")
                self._first_output_done = True
                ops.append(("set", self.ik["first_output"], repr(now).encode()))
        return ops

    def _handover_ops(self, new_inst: str, after: list[bytes]) -> list[Op]:
        nk = inst_keys(new_inst)
        ops: list[Op] = []
        if self._last_output_t is not None:
            ops.append(("set", nk["prev_last_output"], repr(self._last_output_t).encode()))
        ops.append(("set", nk["handover_at"], repr(self.clock.now()).encode()))
        ops.append(("rpush", nk["go"], [encode_go(self.op.snapshot(), new_inst, after)]))
        return ops

    def _replay_head(self, head: bytes, tries: int, isolate: int) -> None:
        """Redelivery after a crash: one event at a time; park an event that failed N times."""
        cfg = self.cfg
        if is_control(head):
            self._batch([head])
            return
        n = self.codec.count(head)
        if n > 1:  # re-frame the head into single events, atomically, keeping the tries
            singles = _split(self.codec, head)
            self.store.execute(
                [
                    ("ltrim", cfg.in_key, 1, -1),
                    ("lpush", cfg.in_key, list(reversed(singles))),
                    ("set", self.k["isolate"], str(isolate + n - 1).encode()),
                    ("set", self.k["tries"], str(tries - 1).encode()),
                ]
            )
            return
        if isolate == 0:
            isolate = 1
        left = str(isolate - 1).encode()
        if tries > cfg.max_failures:
            reason = f"operator {cfg.operator!r} failed {tries - 1} times on this event"
            rec = json.dumps({"frame": head.decode("latin-1"), "reason": reason}).encode()
            self.store.execute(
                [
                    ("rpush", self.k["parked"], [rec]),
                    ("ltrim", cfg.in_key, 1, -1),
                    ("del", self.k["tries"]),
                    ("set", self.k["isolate"], left),
                ]
            )
            print(f"tidal-cep: parked a poison event: {reason}", file=sys.stderr, flush=True)
            return
        outs, parked = self._process([head])
        ops = self._commit_ops(outs, 1, parked, [head]) + [("set", self.k["isolate"], left)]
        self.store.execute(ops)
        self.processed += 1


def main(env: Mapping[str, str] | None = None) -> int:
    """Process entry point: build the runtime from the environment and run it."""
    cfg = RuntimeConfig.from_env(env if env is not None else os.environ)
    op = load_operator(cfg.source)
    if (env if env is not None else os.environ).get("TIDAL_CEP_EMPTY_STATE") == "1":
        op.empty_state = True
    store = open_store(cfg.store)
    rt = OperatorRuntime(cfg, op, store)
    signal.signal(signal.SIGTERM, lambda *_: rt.stop.set())
    rt.run()
    store.close()
    return 0


def run_in_thread(cfg: RuntimeConfig, op: Operator, store: Store) -> tuple[OperatorRuntime, Any]:
    """Start a runtime on a daemon thread (the in-process embedded mode, tests)."""
    rt = OperatorRuntime(cfg, op, store)
    th = threading.Thread(target=rt.run, name=f"cep-op-{cfg.instance}", daemon=True)
    th.start()
    return rt, th


if __name__ == "__main__":
    sys.exit(main())
