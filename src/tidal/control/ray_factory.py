"""The Ray substrate's executor factory: one per gateway (`tidal.control.ray_substrate`
describes how replicas hold their cores). It connects once, keeps the cluster's view (alive
nodes and their cores, the node holds beyond ``cores_per_node``, one warm standby actor per
node, the starts and growths in flight from this gateway). `tidal.control.ray_substrate`'s
`RayFactory` builds `RayExecutor`s on it; this module never imports that one.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any, Protocol

from tidal.control.ray_connect import _hold, _node_affinity, _ray, _remove, authority, connect
from tidal.control.ray_worker import ReplicaActor
from tidal.core.capacity import Capacity
from tidal.core.clock import Clock, MonotonicClock
from tidal.core.errors import TidalError


class TrackedReplica(Protocol):
    """What the node watch needs of an executor it tracks (`RayExecutor` in
    `tidal.control.ray_substrate`, which builds on this module: no import back)."""

    replica_id: str
    node: str

    def alive(self) -> bool: ...

    def mark_dead(self) -> None: ...


log = logging.getLogger("tidal.control.ray")
WORKER_BINDS = ("loopback", "node")

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


class RayFactoryBase:
    """The cluster view behind the gateway's Ray ExecutorFactory (`RayFactory` in
    `tidal.control.ray_substrate` adds ``__call__``, which builds a `RayExecutor`): connects
    once to `address`, places replicas.

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
        self._live: dict[str, TrackedReplica] = {}  # replica id -> executor
        self._monitor: threading.Thread | None = None
        self._closing = threading.Event()
        self._fillers: dict[str, Any] = {}  # node -> hold of its CPUs beyond cores_per_node
        self._fill_lock = threading.Lock()
        self._claims: dict[str, float] = {}  # node -> cores of the starts in flight from here
        self._standby: dict[str, Any] = {}  # node -> an idle replica actor, already started
        self._starts = 0  # replica starts in flight from this gateway
        self._quiet_since = float("-inf")  # when the last of them ended
        self.standby_quiet_s = 2.0

    def track(self, ex: TrackedReplica) -> None:
        """Watch `ex`: it reports not alive() once Ray reports its node dead."""
        with self._lock:
            self._live[ex.replica_id] = ex
            if self._monitor is None:
                self._monitor = threading.Thread(
                    target=self._watch_nodes, name="tidal-ray-nodes", daemon=True
                )
                self._monitor.start()

    def untrack(self, ex: TrackedReplica) -> None:
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

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Around one replica start (`RayExecutor`'s constructor; a move's new replica is
        one): no standby is replaced while it runs, nor for `standby_quiet_s` after the last
        one ends. A start waiting for room leaves the window (`idle`): nothing runs then."""
        self._start_window(+1)
        try:
            yield
        finally:
            self._start_window(-1)

    @contextlib.contextmanager
    def idle(self) -> Iterator[None]:
        """Inside `starting`: a stretch (a hold pending for room) that starts nothing."""
        self._start_window(-1)
        try:
            yield
        finally:
            self._start_window(+1)

    def _start_window(self, delta: int) -> None:
        with self._lock:
            self._starts += delta
            if delta < 0:
                self._quiet_since = self.clock.now()

    def _spare(self, node: str) -> None:
        """Keep one idle replica actor per node (no cores: ``num_cpus=0``, no worker process),
        so a start on that node skips Ray's worker-process start-up (the Python process,
        `import ray`, the runtime env): measured in `tidal bench ray-cluster`, below.

        Not while a start from this gateway is in flight, nor within `standby_quiet_s` of the
        last: the new actor's process (Python, `import ray`) runs under no quota, so it took
        CPU from the replicas starting and serving at their quotas (each `nodes()` call
        replaced a standby at once, mid-start). The node watch (once a second) replaces it
        once the starts are over."""
        with self._lock:
            if node in self._standby or self._closing.is_set():
                return
            if self._starts or self.clock.now() - self._quiet_since < self.standby_quiet_s:
                return
            strategy = _node_affinity(node)
            self._standby[node] = _actor_class().options(scheduling_strategy=strategy).remote()

    def take_standby(self, node: str) -> Any:
        """The idle actor on `node` (a new one if there is none); the node watch replaces it
        once no start is in flight (`_spare`; not here: its start-up would compete with this
        replica's)."""
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

    def claim(
        self, cores: float, *, avoid: str | None = None, only: str | None = None
    ) -> str | None:
        """Among the alive nodes with `cores` free (the book, less the starts and growths in
        flight from here), one with an unclaimed warm standby actor, then the one with the most
        free cores, claimed until `unclaim`; None: no node has them
        (Ray chooses, or the hold stays pending). Spreading keeps room on every node for the
        planners' in-place growth (themis' vertical stage); Ray alone packed replicas.
        `avoid`: any node but that one; `only`: that node or None."""
        nodes = self.nodes()
        used = self.used()
        with self._lock:
            free = {
                n: c - used.get(n, 0.0) - self._claims.get(n, 0.0)
                for n, c in nodes.items()
                if n != avoid and (only is None or n == only)
            }
            # A node with an idle warm actor not claimed by a start in flight first (its
            # start skips a fresh Ray worker process: 0.2 s, not 3-5 s, measured in
            # docs/deploy.md), then the most free cores.
            warm = {n for n in free if n in self._standby and n not in self._claims}
            fits = [n for n in free if free[n] >= cores - 1e-6]
            best = max(fits, key=lambda n: (n in warm, free[n], n), default=None)
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


__all__ = ["WORKER_BINDS", "RayFactoryBase", "TrackedReplica"]
