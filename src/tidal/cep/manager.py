"""The node manager: requests, versions, hot updates and supervision of operators.

One `NodeManager` per host. It owns the registry and one deployment per operator name:
the running instance (a process), its in/out queue keys and counters. `request` starts an
operator if needed and returns its addresses at once: the host may push events before the
process is up, they wait in the in queue. A supervisor thread restarts a crashed instance;
the restarted one re-reads the uncommitted head of the in queue (redelivery).

`update` is make-before-break: start the new version in standby (forked warm from the
preloaded fork server), wait for its readiness signal (a push on ``cep:<inst>:ready``, not a
sleep), push a barrier into the in queue, and let the old instance hand over at that batch
boundary (state snapshot + go in its last commit), then drain and reap it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tidal.cep import procs, sandbox
from tidal.cep.codec import handover_frame, swap_frame, swap_prepare_frame
from tidal.cep.registry import Registry, VersionInfo, VersionSpec
from tidal.cep.sdk.python.runtime import RuntimeConfig, inst_keys, keys
from tidal.cep.store import Store, open_store
from tidal.core.clock import Clock, MonotonicClock
from tidal.core.errors import TidalError

JsonList = list[dict[str, Any]]
ByteList = list[bytes]
NODE_RUNNER = Path(__file__).parent / "sdk" / "node" / "run.js"
NODE_WARM = Path(__file__).parent / "sdk" / "node" / "warm.js"


class DeployDefaults(BaseModel):
    """Queue parameters given to every operator (the CEPless environment contract)."""

    batch: int = Field(default=1000, ge=1, le=100_000, description="B: events per pop.")
    flush_ms: float = Field(default=1.0, gt=0, le=10_000, description="F: host flush period.")
    backoff_ms: float = Field(default=0.1, gt=0, description="Linear back-off step.")
    backoff_max_ms: float = Field(default=1.0, gt=0, description="Back-off ceiling.")
    mode: str = Field(default="blob", pattern="^(faithful|blob)$")
    codec: str = Field(default="json", pattern="^(json|packed)$")
    max_failures: int = Field(default=3, ge=1, description="N: failures before parking.")
    pop: str = Field(
        default="commit",
        pattern="^(commit|pop)$",
        description="commit: LTRIM with the results (redelivery); pop: CEPless' atomic pop.",
    )
    checkpoint_every: int = Field(
        default=10_000,
        ge=0,
        description="K > 0: checkpoint keyed state once K events were consumed since the "
        "last checkpoint, so a crash replays fewer than K events (0: off, a restarted "
        "operator starts empty).",
    )
    node_update: str = Field(
        default="swap",
        pattern="^(swap|process)$",
        description="Hot update of a Node.js operator to a Node.js version: swap = load the "
        "new module in the running runtime and switch at the barrier, keeping the state in "
        "memory; process = a new process in standby and the state handed over.",
    )
    ready_timeout_s: float = Field(default=30.0, gt=0)
    allow_command: bool = Field(
        default=False, description="Accept `language: command` versions (any program)."
    )


class NotRunning(TidalError):
    """The operator is registered but not running (HTTP 409)."""


class Forbidden(TidalError):
    """Refused by the node manager's configuration (HTTP 403)."""


@dataclass
class Deployment:
    name: str
    version: int
    instance: str
    proc: procs.OperatorProcess
    in_key: str
    out_key: str
    restarts: int = 0
    next_restart: float = 0.0
    started_at: float = 0.0
    fast_restarts: int = 0
    stopped: bool = False
    draining: list[procs.OperatorProcess] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)


class NodeManager:
    """Operator registry + deployments on one host (see module docstring)."""

    def __init__(
        self,
        root: str | Path,
        store_url: str,
        defaults: DeployDefaults | None = None,
        clock: Clock | None = None,
        sandbox_cfg: sandbox.SandboxConfig | None = None,
    ) -> None:
        self.root = Path(root)
        self.registry = Registry(self.root / "registry")
        self.sandbox = sandbox_cfg or sandbox.SandboxConfig()
        # One working directory per operator instance, under a base the sandbox user can
        # reach (/tmp/tidal-cep-ops-*, mode 0711) whatever the permissions above `root`.
        self.ops_dir = Path(tempfile.mkdtemp(prefix="tidal-cep-ops-"))
        self.ops_dir.chmod(0o711)
        self.op_store_url = store_url  # the store as operators reach it
        if store_url.startswith("unix://"):
            self.op_store_url = sandbox.share_socket(
                store_url[len("unix://") :], self.ops_dir, self.sandbox
            )
        self.store_url = store_url
        self.store: Store = open_store(store_url)
        self.defaults = defaults or DeployDefaults()
        self.clock = clock or MonotonicClock()
        self.deployments: dict[str, Deployment] = {}
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self._forks = procs.ForkServer()
        self._node_spare: tuple[procs.Command, Path, bool] | None = None
        self._node_spare_net: bool | None = None  # a spare is wanted (network setting)
        self._updating = 0  # hand-overs in progress: no spare is started meanwhile
        self._sup = threading.Thread(target=self._supervise, name="cep-supervisor", daemon=True)
        self._sup.start()

    # -- processes ----------------------------------------------------------------------
    def _network(self, info: VersionInfo) -> bool:
        return info.spec.network or not self.store_url.startswith("unix://")

    @staticmethod
    def _copy_source(info: VersionInfo, plan: dict[str, Any], name: str) -> str:
        """The operator reads its own copy in its directory, not the registry's."""
        if info.source_file is None:
            return ""
        dst = Path(plan["cwd"]) / name
        dst.write_bytes(info.source_file.read_bytes())
        if "uid" in plan:
            os.chown(dst, int(plan["uid"]), int(plan["gid"]))
        return str(dst)  # absolute: the store socket and the sources stay visible

    def _spawn(self, info: VersionInfo, instance: str, standby: bool) -> procs.OperatorProcess:
        plan = sandbox.prepare(self.sandbox, self.ops_dir / instance)
        src = self._copy_source(info, plan, info.source_file.name if info.source_file else "")
        network = self._network(info)
        env = self._contract(info, instance, standby, src)
        if info.spec.language == "python":
            return procs.ForkedPython(self._forks, env, plan, network)
        if info.spec.language == "node":
            return self._node(env, plan, network, src)
        if not self.defaults.allow_command:
            raise Forbidden("language 'command' is disabled on this node manager")
        assert info.spec.command is not None
        return procs.Command(info.spec.command, env, plan, network)

    def _contract(
        self, info: VersionInfo, instance: str, standby: bool, src: str
    ) -> dict[str, str]:
        """The environment contract of one instance of version `info`."""
        d = self.defaults.model_copy(update=self.overrides(info.spec))
        cfg = RuntimeConfig(
            store=self.op_store_url,
            in_key=f"cep:{info.name}:in",
            out_key=f"cep:{info.name}:out",
            operator=info.name,
            instance=instance,
            batch=d.batch,
            flush_ms=d.flush_ms,
            backoff_ms=d.backoff_ms,
            backoff_max_ms=d.backoff_max_ms,
            mode=d.mode,
            codec=d.codec,
            max_failures=d.max_failures,
            checkpoint_every=d.checkpoint_every,
            pop=d.pop,
            standby=standby,
            source=src,
        )
        env = cfg.to_env()
        env.update(info.spec.env)
        env["TIDAL_CEP_VERSION"] = str(info.version)
        if info.spec.empty_state:
            env["TIDAL_CEP_EMPTY_STATE"] = "1"
        return env

    def _node_sdk(self) -> Path:
        """The Node.js SDK copied once into a directory the sandbox user owns: the checkout
        it ships in may not be readable by that user (e.g. below a mode-700 directory)."""
        d = self.ops_dir / "node-sdk"
        if (d / NODE_RUNNER.name).is_file():
            return d
        plan = sandbox.prepare(self.sandbox, d)
        for f in NODE_RUNNER.parent.iterdir():
            if f.is_file():
                dst = d / f.name
                shutil.copyfile(f, dst)
                if "uid" in plan:
                    os.chown(dst, int(plan["uid"]), int(plan["gid"]))
        return d

    def _node(
        self, env: dict[str, str], plan: dict[str, Any], network: bool, src: str
    ) -> procs.OperatorProcess:
        """A Node.js operator: the pre-started spare runtime when it fits (no cold start),
        then a new spare is started for next time; else a cold `node run.js`."""
        spare, self._node_spare = self._node_spare, None
        if spare is not None and spare[2] == network and spare[0].exitcode() is None:
            proc, sdir, _ = spare
            dst = sdir / Path(src).name
            shutil.copyfile(src, dst)
            if "uid" in plan:
                os.chown(dst, int(plan["uid"]), int(plan["gid"]))
            env = {**env, "TIDAL_CEP_SOURCE": str(dst)}
            proc.send(json.dumps({"env": env, "source": str(dst)}).encode())
            self._node_spare_net = network
            return proc
        if spare is not None:
            spare[0].kill()
            spare[0].wait(3)
        self._node_spare_net = network
        runner = self._node_sdk() / NODE_RUNNER.name
        return procs.Command(["node", str(runner), src], env, plan, network)

    def _refill_node_spare(self) -> None:
        """Start the next spare Node.js runtime, if a Node.js operator used the last one.
        Called after a start or a hand-over completed, never during one: a cold `node`
        start costs ~0.1 s of CPU that would compete with the hand-over's critical path
        (state parse, first batch) on a small host."""
        with self._lock:
            if self._updating or self._stop.is_set():
                return
            network, self._node_spare_net = self._node_spare_net, None
            if network is not None and self._node_spare is None:
                self._start_node_spare(network)

    def _start_node_spare(self, network: bool) -> None:
        sdir = self.ops_dir / f"node-spare-{next(self._ids)}"
        plan = sandbox.prepare(self.sandbox, sdir)
        try:
            warm = self._node_sdk() / NODE_WARM.name
            p = procs.Command(["node", str(warm)], {}, plan, network, stdin=True)
        except TidalError:
            return
        self._node_spare = (p, sdir, network)

    @staticmethod
    def overrides(spec: VersionSpec) -> dict[str, Any]:
        """The deployment settings this version overrides (non-None fields)."""
        names = ("checkpoint_every", "pop", "flush_ms", "max_failures")
        return {k: getattr(spec, k) for k in names if getattr(spec, k) is not None}

    def _new_instance(self, name: str, version: int) -> str:
        return f"{name}-v{version}-{next(self._ids)}-{os.getpid()}"

    def _wait_ready(self, instance: str, proc: procs.OperatorProcess) -> None:
        key = inst_keys(instance)["ready"]
        deadline = self.clock.now() + self.defaults.ready_timeout_s
        while self.clock.now() < deadline:
            if self.store.blpop(key, 0.05) is not None:
                return
            code = proc.exitcode()
            if code is not None:
                raise TidalError(
                    f"operator instance {instance} exited with code {code} before it was ready"
                )
        raise TidalError(
            f"operator instance {instance} not ready after {self.defaults.ready_timeout_s} s"
        )

    # -- API ----------------------------------------------------------------------------
    def register(self, name: str, spec: VersionSpec) -> int:
        if spec.language == "command" and not self.defaults.allow_command:
            raise Forbidden(
                "language 'command' is disabled: start the node manager with --allow-command"
            )
        return self.registry.register(name, spec).version

    def request(self, name: str, version: int | None = None) -> dict[str, Any]:
        """Addresses of operator `name`, started (without waiting) if not running."""
        with self._lock:
            dep = self.deployments.get(name)
            if dep is None or dep.stopped:
                info = self.registry.get(name, version)
                inst = self._new_instance(name, info.version)
                proc = self._spawn(info, inst, standby=False)
                dep = Deployment(
                    name, info.version, inst, proc, f"cep:{name}:in", f"cep:{name}:out"
                )
                self.deployments[name] = dep
            out = self.describe(dep)
        self._refill_node_spare()
        return out

    def describe(self, dep: Deployment) -> dict[str, Any]:
        d = self.defaults.model_copy(update=self.overrides(self.registry.get(dep.name).spec))
        return {
            "name": dep.name,
            "version": dep.version,
            "instance": dep.instance,
            "store": self.store_url,
            "in": dep.in_key,
            "out": dep.out_key,
            "batch": d.batch,
            "flush_ms": d.flush_ms,
            "mode": d.mode,
            "codec": d.codec,
            "pop": d.pop,
            "checkpoint_every": d.checkpoint_every,
            "max_failures": d.max_failures,
            "restarts": dep.restarts,
            "running": not dep.stopped,
            "parked": int(self.store.execute([("llen", keys(dep.name)["parked"])])[0]),
        }

    def list(self) -> JsonList:
        with self._lock:
            out = []
            for name in self.registry.names():
                dep = self.deployments.get(name)
                row = {"name": name, "versions": self.registry.versions(name)}
                if dep is not None:
                    row.update(self.describe(dep))
                out.append(row)
            return out

    def update(self, name: str, version: int) -> dict[str, Any]:
        """Hot update to `version` (make-before-break); returns timings in ms."""
        with self._lock:
            self._updating += 1
        try:
            return self._update(name, version)
        finally:
            with self._lock:
                self._updating -= 1
            self._refill_node_spare()

    def _update(self, name: str, version: int) -> dict[str, Any]:
        with self._lock:
            info = self.registry.get(name, version)
            dep = self.deployments.get(name)
            if dep is None or dep.stopped:
                raise NotRunning(f"operator {name!r} is not running; request it first")
            swap = self._swappable(dep, info)
        if swap:
            return self._swap(dep, info)
        with self._lock:
            t0 = self.clock.now()
            inst = self._new_instance(name, info.version)
            proc = self._spawn(info, inst, standby=True)
            try:
                self._wait_ready(inst, proc)
            except TidalError:
                proc.kill()
                raise
            t_ready = self.clock.now()
            old = dep.proc
            dep.draining.append(old)
            dep.proc, dep.instance, dep.version = proc, inst, info.version
            self.store.push(dep.in_key, [handover_frame(inst)])
        code = old.wait(self.defaults.ready_timeout_s)
        t_done = self.clock.now()
        ik = inst_keys(inst)
        at = self.store.execute([("get", ik["handover_at"])])[0]
        if at is None:  # the old instance died before the barrier: the new one starts empty
            self.store.push(ik["go"], [b"E"])
        report = {
            "name": name,
            "version": info.version,
            "instance": inst,
            "start_ms": (t_ready - t0) * 1e3,
            "update_ms": (t_done - t0) * 1e3,
            "handover_wait_ms": (float(at) - t_ready) * 1e3 if at else None,
            "old_exit": code,
            "empty_state": info.spec.empty_state,
        }
        dep.updates.append(report)
        return report

    def _swappable(self, dep: Deployment, info: VersionInfo) -> bool:
        """A Node.js version replacing a running Node.js runtime with the same network
        setting (`node_update: swap`): updated in place (`_swap`)."""
        old = self.registry.get(dep.name, dep.version)
        return (
            self.defaults.node_update == "swap"
            and info.spec.language == "node"
            and old.spec.language == "node"
            and self._network(info) == self._network(old)
            and isinstance(dep.proc, procs.Command)
            and dep.proc.exitcode() is None
        )

    def _swap(self, dep: Deployment, info: VersionInfo) -> dict[str, Any]:
        """In-place hot update of a Node.js runtime (docs/cep-protocol.md, step 7b): the new
        module is loaded beside the running one (`\0P`, answered on ``ready``), then the
        barrier `\0W<new>` switches versions between two batches; the keyed state stays in
        memory."""
        with self._lock:
            t0 = self.clock.now()
            proc = dep.proc
            assert isinstance(proc, procs.Command)
            inst = self._new_instance(dep.name, info.version)
            name = f"{inst}-{info.source_file.name}" if info.source_file else ""
            src = self._copy_source(info, proc.plan, name)
            env = sandbox.child_env(self._contract(info, inst, False, src), str(proc.cwd))
            self.store.push(dep.in_key, [swap_prepare_frame(inst, env, src)])
            key = inst_keys(inst)
            deadline = t0 + self.defaults.ready_timeout_s
            answer = None
            while answer is None and self.clock.now() < deadline and proc.exitcode() is None:
                answer = self.store.blpop(key["ready"], 0.05)
            if answer is None or answer[:1] != b"1":
                why = "no answer" if answer is None else answer[1:].decode(errors="replace")
                raise TidalError(
                    f"operator {dep.name!r} could not load version {info.version}: {why}"
                )
            t_ready = self.clock.now()
            dep.instance, dep.version = inst, info.version
            self.store.push(dep.in_key, [swap_frame(inst)])
        done = None
        while done is None and self.clock.now() < deadline and proc.exitcode() is None:
            done = self.store.blpop(key["swapped"], 0.05)
        t_done = self.clock.now()
        at = self.store.execute([("get", key["handover_at"])])[0]
        report = {
            "name": dep.name,
            "version": info.version,
            "instance": inst,
            "start_ms": (t_ready - t0) * 1e3,
            "update_ms": (t_done - t0) * 1e3,
            "handover_wait_ms": (float(at) - t_ready) * 1e3 if at else None,
            "old_exit": proc.exitcode(),
            "empty_state": info.spec.empty_state,
            "in_place": True,
        }
        dep.updates.append(report)
        return report

    def update_gap_ms(self, name: str) -> float | None:
        """Last output of the old version to first output of the new, for the last update."""
        parts = self.update_gap_parts(name)
        return None if parts is None else parts["old_ms"] + parts["new_ms"]

    def update_gap_parts(self, name: str) -> dict[str, float] | None:
        """The gap split at the hand-over commit: old last output -> hand-over (old_ms),
        hand-over -> new first output (new_ms)."""
        dep = self.deployments.get(name)
        if dep is None:
            raise NotRunning(f"operator {name!r} is not running")
        ik = inst_keys(dep.instance)
        first, prev, at = self.store.execute(
            [
                ("get", ik["first_output"]),
                ("get", ik["prev_last_output"]),
                ("get", ik["handover_at"]),
            ]
        )
        if first is None or prev is None or at is None:
            return None
        return {
            "old_ms": (float(at) - float(prev)) * 1e3,
            "new_ms": (float(first) - float(at)) * 1e3,
        }

    def parked(self, name: str) -> ByteList:
        self.registry.get(name)  # UnknownOperator (404) for a name never registered
        k = keys(name)["parked"]
        return list(self.store.execute([("lrange", k, 0, -1)])[0])

    def stop(self, name: str) -> dict[str, Any]:
        with self._lock:
            self.registry.get(name)
            dep = self.deployments.get(name)
            if dep is None or dep.stopped:
                raise NotRunning(f"operator {name!r} is not running")
            dep.stopped = True
            dep.proc.terminate()
        if dep.proc.wait(5) is None:
            dep.proc.kill()
        return {"name": name, "stopped": True}

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            for dep in self.deployments.values():
                dep.stopped = True
                for p in [dep.proc, *dep.draining]:
                    p.terminate()
            for dep in self.deployments.values():
                for p in [dep.proc, *dep.draining]:
                    if p.wait(3) is None:
                        p.kill()
                        p.wait(3)
        self._sup.join(timeout=2)
        self._forks.close()
        if self._node_spare is not None:
            self._node_spare[0].kill()
            self._node_spare[0].wait(3)
        self.store.close()
        shutil.rmtree(self.ops_dir, ignore_errors=True)

    # -- supervision --------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stop.wait(0.02):
            with self._lock:
                for dep in self.deployments.values():
                    dep.draining = [p for p in dep.draining if p.exitcode() is None]
                    if dep.stopped or dep.proc.exitcode() is None:
                        continue
                    now = self.clock.now()
                    if now < dep.next_restart:  # back off: 0.02 s doubling up to 2 s
                        continue
                    if now - dep.started_at > 2.0:  # it ran a while: a one-off crash
                        dep.fast_restarts = 0
                    dep.next_restart = now + min(0.5, 0.01 * 2 ** min(dep.fast_restarts, 6))
                    dep.fast_restarts += 1
                    code = dep.proc.exitcode()
                    with contextlib.suppress(TidalError):
                        info = self.registry.get(dep.name, dep.version)
                        inst = self._new_instance(dep.name, dep.version)
                        dep.proc = self._spawn(info, inst, standby=False)
                        dep.instance = inst
                        dep.started_at = self.clock.now()
                        dep.restarts += 1
                        print(
                            f"tidal-cep: {dep.name} exited with code {code}; restarted as "
                            f"{inst} (restart {dep.restarts})",
                            flush=True,
                        )
            self._refill_node_spare()
