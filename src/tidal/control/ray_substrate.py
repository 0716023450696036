"""The Ray substrate: replicas as Ray actors, with capacity-true placement. Tidal's Ray calls
are here, in `tidal.control.ray_connect` (connecting, the placement authority) and in
`tidal.control.ray_worker` (the replica actor); placement logic: `control.placement`.

How a replica's cores are held, so Ray's scheduler and autoscaler see the truth:
- Every replica's cores are held by Ray **placement groups** of one ``{"CPU": cores}`` bundle
  (fractional allowed). A new replica first holds its cores on the alive node with the most
  free cores (`RayFactory.claim`: spread, so every node keeps room for in-place growth); when
  no node has them, or another gateway took them first, without a node constraint: Ray
  places it on a node with room, or keeps it **pending**, which is the demand the
  KubeRay autoscaler scales on (the Kubernetes pod model: pending, then placed); Ray
  retries the placement itself.
- ``cores_per_node`` below a node's Ray CPUs (Ray counts whole CPUs: a 2/3-core node is a
  1-CPU raylet): the difference is held on every node (`RayFactory._fill`), so Ray's free
  CPUs, its placement and the demand it reports equal Tidal's book.
- The replica actor then runs on the hold's node (hard node affinity) with ``num_cpus=0``: a
  Ray actor's resource request is fixed at creation, so the placement groups, not the actor,
  carry the cores. That is what makes resizing in place truthful in Ray's accounting:
  growing adds a hold of the difference on the same node (``bundle_label_selector`` on
  ``ray.io/node-id``) and is refused, the replica unchanged, when it is not placed within
  ``grow_timeout_s``; shrinking swaps the holds for one of the new size.
- One **placement authority** per cluster, a detached named actor (``tidal-placement`` in
  namespace ``tidal``) holding the book, pins CPUs per node without overlap across every
  actor and gateway; nothing is counted privately in an actor process.
- Batches do not pass through the actor: it starts the replica's worker process on two TCP
  connections the gateway opened to it (`tidal.control.ray_worker`: 127.0.0.1 on the
  gateway's host, token-checked), and the gateway sends each batch straight to the worker
  with the data plane's frame codec, as on the local substrate. The actor owns the worker's
  lifetime (start, resize in place, kill, stop). A worker whose node or actor died closes its
  connection: `WorkerDied`, the gateway retries the batch within its deadline and replaces
  the replica.

``tidal serve config.yaml --substrate ray --address ADDR`` wires these in.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import uuid
from typing import Any

import numpy as np

from tidal.control.local import LocalActuator
from tidal.control.ray_connect import (
    AUTHORITY_NAME,
    NAMESPACE,
    PlacementAuthority,
    _hold,
    _hold_node,
    _node_affinity,
    _ray,
    _remove,
    authority,
    connect,
)
from tidal.control.ray_worker import DirectWorker, ReplicaActor, kernel_id, open_channels, shares
from tidal.core.capacity import Capacity
from tidal.core.clock import Clock, MonotonicClock
from tidal.core.errors import TidalError
from tidal.core.plan import Plan
from tidal.dataplane.worker import START_TIMEOUT_S, WorkerDied

log = logging.getLogger("tidal.control.ray")
WORKER_BINDS = ("loopback", "node")


# ------------------------------------------------------------------ replicas
_ACTOR_LOCK = threading.Lock()
_ACTOR: Any = None


def _actor_class() -> Any:
    global _ACTOR
    with _ACTOR_LOCK:
        if _ACTOR is None:
            # num_cpus=0: the placement groups hold the cores (see the module docstring);
            # max_concurrency=1: one batch or resize at a time, as the data plane expects.
            _ACTOR = _ray().remote(num_cpus=0, max_restarts=0, max_concurrency=1)(ReplicaActor)
        return _ACTOR


class RayExecutor:
    """One replica (the data plane's Executor contract), started as described above.

    Blocks in the constructor until the replica is warm: while no node has room its hold is
    pending (``pending_timeout_s``, then TidalError and nothing is left behind).
    """

    def __init__(
        self,
        factory: RayFactory,
        variant: str,
        cores: float,
        *,
        pending_timeout_s: float = 600.0,
        grow_timeout_s: float = 5.0,
        spread_timeout_s: float = 3.0,
    ) -> None:
        ray = _ray()
        self.factory = factory
        self.variant = variant
        self.cores = cores
        self.grow_timeout_s = grow_timeout_s
        self.replica_id = f"{variant}-{uuid.uuid4().hex[:10]}"
        self._holds: list[Any] = []
        self._dead = False
        self._stopped = False
        self.actor: Any = None
        self.direct: DirectWorker | None = None
        self.cold_start_s = 0.0
        claim = factory.claim(cores)
        try:
            pg = _hold(cores, claim)
            self._holds.append(pg)
            ready, _ = ray.wait([pg.ready()], timeout=spread_timeout_s if claim else 0.0)
            if claim and not ready:  # another gateway took the node: let Ray choose
                self._holds.remove(pg)
                _remove(pg)
                pg = _hold(cores, None)
                self._holds.append(pg)
            if not ready:
                ready, _ = ray.wait([pg.ready()], timeout=pending_timeout_s)
            if not ready:
                raise TidalError(
                    f"replica of {variant} ({cores:g} cores) stayed pending for "
                    f"{pending_timeout_s:g} s: no Ray node had the cores"
                )
            self.node = _hold_node(pg)
            self.actor = factory.take_standby(self.node)
            at = ray.get(self.actor.where.remote(), timeout=120)
            node, cpu_ids = at["node"], at["cpus"]
            grant = self._reserve(node, cores, cpu_ids, at["kernel"]["boot"])
            self.cpus: tuple[int, ...] = tuple(grant.cpus)
            info = self._start_worker(at, cores)
        except BaseException:
            self._cleanup()
            raise
        finally:
            factory.unclaim(claim, cores)
        self.pid: int = int(info["pid"])
        self.mechanism = str(info["mechanism"])
        factory.track(self)

    def _reserve(self, node: str, cores: float, cpu_ids: list[int], boot: str) -> Any:
        """The authority's grant on `node`, where Ray placed this replica's hold. Ray holds
        the cores, so a refusal is the book lagging Ray (a grow booked before its hold, now
        refused within `grow_timeout_s`; a release after its holds went): asked again until
        that has passed, then TidalError. (A start failed on that race mid-surge, measured.)"""
        ray = _ray()
        auth, fac = self.factory.authority, self.factory
        deadline = fac.clock.now() + self.grow_timeout_s + 2.0
        while True:
            grant = ray.get(
                auth.reserve.remote(
                    self.replica_id, node, cores, fac.node_cores(node), cpu_ids, boot
                ),
                timeout=30,
            )
            if grant is not None:
                return grant
            if fac.clock.now() >= deadline or fac._closing.wait(0.2):
                raise TidalError(
                    f"the placement authority has no CPUs for {cores:g} cores on node "
                    f"{node[:8]} (used {ray.get(auth.used.remote(), timeout=30)})"
                )

    def _start_worker(self, at: dict[str, Any], cores: float) -> dict[str, Any]:
        """The direct data path (`tidal.control.ray_worker`): the actor listens, this
        gateway connects, the actor spawns the worker on those connections, and its READY
        comes here. 127.0.0.1 when this gateway shares the node's network namespace, else
        the node's address if `worker_bind` is "node" (TidalError naming it otherwise)."""
        ray = _ray()
        here = kernel_id()
        if shares(here, at["kernel"], "net"):
            host = "127.0.0.1"
        elif self.factory.worker_bind == "node":
            host = str(at["ip"])
        else:
            raise TidalError(
                f"Ray node {self.node[:8]} ({at['ip']}) is another host: its worker would "
                "have to listen on the node's address; allow it with worker_bind='node' "
                "(TIDAL_RAY_WORKER_BIND=node; docs/deploy.md, multi-host)"
            )
        t0 = self.factory.clock.now()
        port, token = ray.get(self.actor.listen.remote(host), timeout=30)
        sync, asock = open_channels(host, int(port), token)
        where = f"on node {self.node[:8]}"
        self.direct = DirectWorker.attach(
            self.variant, cores, sync, asock, where=where,
            local_pid=shares(here, at["kernel"], "pid"),
            on_kill=lambda: self.actor.kill_worker.remote(),
        )  # fmt: skip
        info: dict[str, Any] = ray.get(
            self.actor.start.remote(cores, list(self.cpus), self.variant), timeout=300
        )
        try:
            self.direct.wait_ready(START_TIMEOUT_S)
        except WorkerDied as e:
            tail = ray.get(self.actor.stderr_tail.remote(), timeout=30)
            raise WorkerDied(f"{e}: {tail}") from None
        ray.get(self.actor.settle.remote(), timeout=30)
        self.cold_start_s = self.factory.clock.now() - t0
        if not info.get("main_thread", True):
            log.warning("replica %s: its actor spawned the worker off its main thread; the "
                        "worker may outlive the actor", self.replica_id)  # fmt: skip
        return info

    def _conn(self) -> DirectWorker:
        if self.direct is None:
            raise WorkerDied(f"replica {self.replica_id} has no worker connection")
        return self.direct

    async def infer_async(self, batch: np.ndarray) -> np.ndarray:
        """One batch straight to the worker (no Ray call); WorkerDied once it is gone."""
        try:
            return await self._conn().infer_async(batch)
        except WorkerDied:
            self._dead = True
            raise

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Blocking variant (the gateway's calibration uses it)."""
        try:
            return self._conn().infer(batch)
        except WorkerDied:
            self._dead = True
            raise

    def progress(self) -> tuple[str, int] | None:
        """The watchdog's probe where this gateway shares the worker's pid namespace."""
        return self.direct.progress() if self.direct is not None else None

    def kill(self) -> None:
        """SIGKILL the worker through its actor (the watchdog found it sick): its connection
        closes and pending batches fail with WorkerDied."""
        if self.direct is not None:
            self.direct.kill()

    def resize(self, cores: float) -> float:
        """Resize in place, holding the cores in Ray first; TidalError (unchanged) if the node
        has no room, WorkerDied if the actor is gone."""
        ray = _ray()
        auth = self.factory.authority
        old = self.cores
        grant = ray.get(auth.resize.remote(self.replica_id, cores), timeout=30)
        if grant is None:
            raise TidalError(
                f"no room on node {self.node[:8]} to resize {self.variant} {old:g} -> "
                f"{cores:g} cores (used {ray.get(auth.used.remote(), timeout=30)})"
            )
        try:
            self._rehold(old, cores)
        except TidalError:
            ray.get(auth.resize.remote(self.replica_id, old), timeout=30)
            raise
        try:
            dur = float(ray.get(self.actor.resize.remote(cores, list(grant.cpus)), timeout=60))
        except ray.exceptions.RayActorError as e:
            self._dead = True
            raise WorkerDied(f"Ray actor of {self.variant} died during resize: {e}") from e
        self.cores, self.cpus = cores, tuple(grant.cpus)
        return dur

    def _rehold(self, old: float, new: float) -> None:
        ray = _ray()
        if new > old + 1e-9:
            pg = _hold(new - old, self.node)
            ready, _ = ray.wait([pg.ready()], timeout=self.grow_timeout_s)
            if not ready:
                _remove(pg)
                raise TidalError(
                    f"Ray has no {new - old:g} free CPUs on node {self.node[:8]} to grow "
                    f"{self.variant} to {new:g} cores"
                )
            self._holds.append(pg)
        elif new < old - 1e-9:
            # Release first, then hold the smaller size on the same node (it fits: we just
            # freed more than we ask). Ray counts the new size from here on.
            for pg in self._holds:
                _remove(pg)
            self._holds = []
            pg = _hold(new, self.node)
            ray.wait([pg.ready()], timeout=30)
            self._holds.append(pg)

    def cpu_state(self) -> dict[str, Any]:
        """The quota and CPU set read back from the kernel inside the actor (tests)."""
        out: dict[str, Any] = _ray().get(self.actor.cpu_state.remote(), timeout=30)
        return out

    def _cleanup(self) -> None:
        ray = _ray()
        if self.direct is not None:
            self.direct.stop()
        if self.actor is not None:
            try:
                ray.kill(self.actor, no_restart=True)
            except Exception as e:  # already gone with its node
                log.info("killing %s: %s", self.replica_id, e)
        for pg in self._holds:
            try:
                _remove(pg)
            except Exception as e:
                log.info("removing a hold of %s: %s", self.replica_id, e)
        self._holds = []
        self.factory.untrack(self)
        try:
            ray.get(self.factory.authority.release.remote(self.replica_id), timeout=30)
        except Exception as e:
            log.warning("releasing %s in the placement authority: %s", self.replica_id, e)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        ray = _ray()
        try:
            if self.direct is not None:
                self.direct.stop()  # SHUTDOWN, connections closed: the worker exits
            if not self._dead and self.actor is not None:
                ray.get(self.actor.stop.remote(), timeout=10)
        except Exception as e:  # dead node or actor: nothing left to stop
            log.info("stopping %s on %s: %s", self.variant, self.node[:8], e)
        finally:
            self._cleanup()

    def alive(self) -> bool:
        direct = self.direct
        return not self._dead and not self._stopped and direct is not None and direct.alive()

    def mark_dead(self) -> None:
        """Its node is gone (the factory's node watch): not alive() from now on."""
        self._dead = True


class RayFactory:
    """The gateway's ExecutorFactory for Ray: connects once to `address`, places replicas.

    `autoscale_max_nodes`: when the cluster can grow (KubeRay's autoscaler), the planners see
    that many nodes of the current node size; replicas beyond the nodes present stay pending
    until the autoscaler adds a node.

    `worker_bind` (default: $TIDAL_RAY_WORKER_BIND, else "loopback"): where a replica's
    worker listens for this gateway's connections. "loopback": 127.0.0.1 only, so a replica
    on a node in another network namespace (another host) fails to start, naming this
    option; "node": the node's address (token-checked, unencrypted: docs/deploy.md).
    """

    def __init__(
        self,
        address: str | None,
        cores_per_node: float | None = None,
        *,
        autoscale_max_nodes: int | None = None,
        pending_timeout_s: float = 600.0,
        worker_bind: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        bind = worker_bind or os.environ.get("TIDAL_RAY_WORKER_BIND") or "loopback"
        if bind not in WORKER_BINDS:
            raise TidalError(
                f"worker_bind {bind!r} is not one of {', '.join(WORKER_BINDS)} "
                "(TIDAL_RAY_WORKER_BIND or RayFactory(worker_bind=...))"
            )
        self.worker_bind = bind
        self.clock: Clock = clock or MonotonicClock()
        self.address = address
        self.cores_per_node = cores_per_node
        self.autoscale_max_nodes = autoscale_max_nodes
        self.pending_timeout_s = pending_timeout_s
        self._authority: Any = None
        self._lock = threading.Lock()
        self._live: dict[str, RayExecutor] = {}  # replica id -> executor
        self._monitor: threading.Thread | None = None
        self._closing = threading.Event()
        self._fillers: dict[str, Any] = {}  # node -> hold of its CPUs beyond cores_per_node
        self._fill_lock = threading.Lock()
        self._claims: dict[str, float] = {}  # node -> cores of the starts in flight from here
        self._standby: dict[str, Any] = {}  # node -> an idle replica actor, already started

    def track(self, ex: RayExecutor) -> None:
        """Watch `ex`: it reports not alive() once Ray reports its node dead."""
        with self._lock:
            self._live[ex.replica_id] = ex
            if self._monitor is None:
                self._monitor = threading.Thread(
                    target=self._watch_nodes, name="tidal-ray-nodes", daemon=True
                )
                self._monitor.start()

    def untrack(self, ex: RayExecutor) -> None:
        with self._lock:
            self._live.pop(ex.replica_id, None)

    def _watch_nodes(self, period_s: float = 1.0) -> None:
        """Once a second: replicas on nodes Ray reports dead are marked dead, so the data
        plane's liveness sweep replaces them even when no batch is routed to them."""
        while not self._closing.wait(period_s):
            try:
                _, dead = self._nodes()
            except Exception as e:  # the cluster is unreachable: try again next period
                log.info("ray node watch: %s", e)
                continue
            gone = set(dead)
            with self._lock:
                lost = [ex for ex in self._live.values() if ex.node in gone]
            for ex in lost:
                if ex.alive():
                    log.warning("replica %s: its Ray node %s died", ex.replica_id, ex.node[:8])
                    ex.mark_dead()

    def connect(self) -> None:
        with self._lock:
            connect(self.address)
            if self._authority is None:
                self._authority = authority()
                # At exit (after a SIGTERM'd gateway has stopped its replicas): remove the
                # detached authority if nothing holds cores any more. Replica actors and their
                # placement groups belong to this driver's job; Ray removes them with it.
                atexit.register(self.shutdown)

    @property
    def authority(self) -> Any:
        self.connect()
        return self._authority

    def nodes(self) -> dict[str, float]:
        """Alive nodes with CPUs -> their cores (a head started with 0 CPUs hosts nothing)."""
        return self._nodes()[0]

    def _nodes(self) -> tuple[dict[str, float], list[str]]:
        """(alive nodes with CPUs -> cores, ids of the nodes Ray reports dead)."""
        self.connect()
        alive: dict[str, float] = {}
        dead: list[str] = []
        for n in _ray().nodes():
            cpus = float(n.get("Resources", {}).get("CPU", 0.0))
            if not n.get("Alive"):
                dead.append(n["NodeID"])
            elif cpus > 0:
                alive[n["NodeID"]] = self.cores_per_node or cpus
                self._fill(n["NodeID"], cpus)
                self._spare(n["NodeID"])
        for node in dead:
            self._fillers.pop(node, None)
            with self._lock:
                self._standby.pop(node, None)
        return dict(sorted(alive.items())), dead

    def _spare(self, node: str) -> None:
        """Keep one idle replica actor per node (no cores: ``num_cpus=0``, no worker process),
        so a start on that node skips Ray's worker-process start-up (the Python process,
        `import ray`, the runtime env): measured in `tidal bench ray-cluster`, below."""
        with self._lock:
            if node in self._standby or self._closing.is_set():
                return
            strategy = _node_affinity(node)
            self._standby[node] = _actor_class().options(scheduling_strategy=strategy).remote()

    def take_standby(self, node: str) -> Any:
        """The idle actor on `node` (a new one if there is none); the node watch replaces it
        within a second (not here: its start-up would compete with this replica's)."""
        with self._lock:
            actor = self._standby.pop(node, None)
        if actor is None:
            actor = _actor_class().options(scheduling_strategy=_node_affinity(node)).remote()
        return actor

    def _fill(self, node: str, cpus: float, timeout_s: float = 10.0) -> None:
        """Hold `node`'s Ray CPUs beyond `cores_per_node` (Ray counts whole CPUs only; a
        2/3-core node is a 1-CPU raylet), so Ray places replicas, and reports the demand of
        pending ones, with the cores Tidal's book counts. Without it Ray put a replica where
        the book had no room and the start failed. A hold not placed within `timeout_s`
        (replicas took the CPUs first) is dropped and tried again on the next call."""
        extra = cpus - (self.cores_per_node or cpus)
        if extra < 1e-4 or node in self._fillers:
            return
        with self._fill_lock:
            if node in self._fillers or self._closing.is_set():
                return
            pg = _hold(extra, node)
            ready, _ = _ray().wait([pg.ready()], timeout=timeout_s)
            if ready:
                self._fillers[node] = pg
                return
            _remove(pg)
        log.warning("node %s: could not hold its %.3g CPUs beyond Tidal's", node[:8], extra)

    def node_cores(self, node: str) -> float:
        cores = self.nodes().get(node)
        if cores is None:
            raise TidalError(f"Ray node {node[:8]} is not alive")
        return cores

    def capacity(self) -> Capacity:
        """The planners' capacity from the cluster's real resources, refreshed per call; the
        authority forgets nodes that left."""
        nodes, dead = self._nodes()
        try:
            if dead:
                _ray().get(self.authority.forget.remote(dead), timeout=30)
        except Exception as e:
            log.warning("placement authority: %s", e)
        if not nodes:
            return Capacity(nodes=1, cores_per_node=0.0)
        n = max(len(nodes), self.autoscale_max_nodes or 0)
        return Capacity(nodes=n, cores_per_node=min(nodes.values()))

    def used(self) -> dict[str, float]:
        out: dict[str, float] = _ray().get(self.authority.used.remote(), timeout=30)
        return out

    def claim(self, cores: float) -> str | None:
        """The alive node with the most free cores (the book, less the starts in flight from
        here) if it has `cores`, claimed until `unclaim`; None: no node has them (Ray
        chooses, or the hold stays pending). Spreading keeps room on every node for the
        planners' in-place growth (themis' vertical stage); Ray alone packed replicas."""
        nodes = self.nodes()
        used = self.used()
        with self._lock:
            free = {n: c - used.get(n, 0.0) - self._claims.get(n, 0.0) for n, c in nodes.items()}
            best = max(free, key=lambda n: (free[n], n), default=None)
            if best is None or free[best] < cores - 1e-6:
                return None
            self._claims[best] = self._claims.get(best, 0.0) + cores
            return best

    def unclaim(self, node: str | None, cores: float) -> None:
        if node is None:
            return
        with self._lock:
            left = self._claims.get(node, 0.0) - cores
            if left > 1e-9:
                self._claims[node] = left
            else:
                self._claims.pop(node, None)

    def __call__(self, variant: str, cores: float) -> RayExecutor:
        self.connect()
        return RayExecutor(self, variant, cores, pending_timeout_s=self.pending_timeout_s)

    def shutdown(self) -> None:
        """Remove the authority when no replica holds anything (SIGTERM leaves no actor)."""
        self._closing.set()
        if self._authority is None:
            return
        ray = _ray()
        with self._lock:
            spares, self._standby = list(self._standby.values()), {}
        for actor in spares:
            try:
                ray.kill(actor, no_restart=True)
            except Exception as e:  # its node is gone
                log.info("killing a standby actor: %s", e)
        with self._fill_lock:
            for pg in self._fillers.values():
                try:
                    _remove(pg)
                except Exception as e:  # its node is gone
                    log.info("removing a node hold: %s", e)
            self._fillers = {}
        try:
            if not ray.get(self._authority.grants.remote(), timeout=10):
                ray.kill(self._authority, no_restart=True)
        except Exception as e:
            log.info("placement authority at shutdown: %s", e)
        self._authority = None


class RayActuator(LocalActuator):
    """Plans applied through the gateway to Ray actors; capacity = the live cluster's."""

    name = "ray"

    def __init__(self, gateway: Any, factory: RayFactory) -> None:
        super().__init__(gateway, factory.capacity())
        self.factory = factory

    def capacity(self) -> Capacity:
        self._capacity = self.factory.capacity()
        return self._capacity

    def apply(self, plan: Plan) -> Any:
        self.capacity()  # check the plan against the cluster as it is now
        return super().apply(plan)


async def wait_ready(gateway: Any, stage: str, replicas: int, timeout_s: float = 120.0) -> None:
    """Wait until `stage` has `replicas` ready replicas (tests, CLI)."""
    clock = gateway.clock
    t0 = clock.now()
    while gateway.metrics_snapshot()[stage].replicas != replicas:
        if clock.now() - t0 > timeout_s:
            raise TidalError(f"stage {stage!r} did not reach {replicas} replicas in {timeout_s} s")
        await asyncio.sleep(0.1)


__all__ = ["AUTHORITY_NAME", "NAMESPACE", "PlacementAuthority", "RayActuator", "RayExecutor"]
__all__ += ["RayFactory", "authority", "connect", "wait_ready"]
