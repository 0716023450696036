"""The Ray substrate: replicas as Ray actors, placed by the planners' node-capacity model.

All Ray API calls of Tidal are made here (one thin layer per substrate).

- :class:`ReplicaActor` hosts one foundation worker process (`WorkerHandle`) on its node: the
  worker is pinned to its cores (cgroup quota + CPU affinity of every thread) and resized in
  place inside the actor, since Ray itself does not pin.
- :class:`RayPlacement` is the node-capacity model: the cluster's alive nodes x cores per
  node (the planners' `Capacity`), first-fit placement of each replica's cores on a node
  (the planners' `pack` rule), released when the replica stops or its node dies.
- :class:`RayExecutor` is what the gateway's stages route batches to (the data plane's
  `Executor` contract): ``infer_async`` awaits the actor's result over Ray; an actor that
  died (its node disappeared) raises `WorkerDied`, so the gateway retries the batch and
  replaces the replica, which the placement puts on a remaining node.
- :class:`RayActuator` is the LocalActuator over a gateway whose factory is Ray's, with the
  live capacity of the cluster.

``tidal serve config.yaml --substrate ray --address ADDR`` wires these in.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import numpy as np

from tidal.control.local import LocalActuator
from tidal.core.clock import Clock, MonotonicClock
from tidal.core.errors import TidalError
from tidal.planners.base import Capacity

log = logging.getLogger("tidal.control.ray")


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise TidalError(
            "the Ray substrate needs ray: uv pip install --python .venv/bin/python 'ray[serve]'"
        ) from None
    return ray


class ReplicaActor:
    """Body of the Ray actor (decorated lazily by `_actor_class`)."""

    def __init__(self, variant: str, cores: float) -> None:
        from tidal.dataplane.worker import WorkerHandle

        self.handle = WorkerHandle.start(variant, cores)

    def info(self) -> dict[str, Any]:
        ray = _ray()
        return {
            "pid": self.handle.pid,
            "node_id": ray.get_runtime_context().get_node_id(),
            "cold_start_s": self.handle.cold_start_s,
            "mechanism": self.handle.mechanism,
        }

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.handle.infer(batch)

    def resize(self, cores: float) -> float:
        return float(self.handle.resize(cores))

    def stop(self) -> None:
        self.handle.stop()


_ACTOR: Any = None


def _actor_class() -> Any:
    global _ACTOR
    if _ACTOR is None:
        # num_cpus=0: Ray's own CPU accounting is replaced by RayPlacement (fractional cores,
        # in-place resize); max_concurrency=1: one batch or resize at a time, as the data plane.
        _ACTOR = _ray().remote(num_cpus=0, max_restarts=0, max_concurrency=1)(ReplicaActor)
    return _ACTOR


class RayPlacement:
    """Node-capacity model of the Ray cluster: first-fit of replica cores onto alive nodes.

    `cores_per_node` None = each node's own CPU count as Ray reports it.
    """

    def __init__(self, cores_per_node: float | None = None) -> None:
        self.cores_per_node = cores_per_node
        self.used: dict[str, float] = {}
        self._lock = threading.Lock()

    def nodes(self) -> list[tuple[str, float]]:
        """(node id, cores) of the alive nodes, sorted by id (a stable first-fit order)."""
        out = []
        for n in _ray().nodes():
            if n.get("Alive"):
                cpus = float(n.get("Resources", {}).get("CPU", 0.0))
                if cpus > 0:  # a node started with num_cpus=0 (e.g. a head) hosts no replica
                    out.append((n["NodeID"], self.cores_per_node or cpus))
        return sorted(out)

    def capacity(self) -> Capacity:
        nodes = self.nodes()
        if not nodes:
            return Capacity(nodes=1, cores_per_node=0.5)
        return Capacity(nodes=len(nodes), cores_per_node=min(c for _, c in nodes))

    def place(self, cores: float) -> str:
        """Reserve `cores` on the first alive node with room; TidalError if none has."""
        with self._lock:
            alive = self.nodes()
            ids = {n for n, _ in alive}
            for n in list(self.used):
                if n not in ids:  # its node died: what ran there is gone
                    del self.used[n]
            for node, cap in alive:
                if self.used.get(node, 0.0) + cores <= cap + 1e-9:
                    self.used[node] = self.used.get(node, 0.0) + cores
                    return node
        raise TidalError(
            f"no Ray node has {cores:g} free cores "
            f"(used {dict(self.used)} of {[(n[:8], c) for n, c in alive]})"
        )

    def resize(self, node: str, old: float, new: float) -> None:
        with self._lock:
            if node in self.used:
                self.used[node] = max(0.0, self.used[node] - old + new)

    def release(self, node: str, cores: float) -> None:
        with self._lock:
            if node in self.used:
                self.used[node] = max(0.0, self.used[node] - cores)


class RayExecutor:
    """One replica: a ReplicaActor pinned to a node (the data plane's Executor contract)."""

    def __init__(self, placement: RayPlacement, variant: str, cores: float) -> None:
        ray = _ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.placement = placement
        self.variant = variant
        self.cores = cores
        self.node = placement.place(cores)
        strategy = NodeAffinitySchedulingStrategy(node_id=self.node, soft=False)
        try:
            self.actor = _actor_class().options(scheduling_strategy=strategy).remote(variant, cores)
            info = ray.get(self.actor.info.remote(), timeout=180)
        except Exception:
            placement.release(self.node, cores)
            raise
        self.pid: int = int(info["pid"])
        self.cold_start_s: float = float(info["cold_start_s"])
        self.mechanism = str(info["mechanism"])
        self._dead = False
        self._stopped = False

    async def infer_async(self, batch: np.ndarray) -> np.ndarray:
        from tidal.dataplane.worker import WorkerDied

        ray = _ray()
        try:
            out: np.ndarray = await self.actor.infer.remote(batch)
            return out
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            self._dead = True
            raise WorkerDied(
                f"Ray actor of {self.variant} on node {self.node[:8]} died: {e}"
            ) from e

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Blocking variant (the gateway's calibration uses it)."""
        out: np.ndarray = _ray().get(self.actor.infer.remote(batch), timeout=60)
        return out

    def resize(self, cores: float) -> float:
        from tidal.dataplane.worker import WorkerDied

        ray = _ray()
        try:
            dur = float(ray.get(self.actor.resize.remote(cores), timeout=60))
        except ray.exceptions.RayActorError as e:
            self._dead = True
            raise WorkerDied(f"Ray actor of {self.variant} died during resize: {e}") from e
        self.placement.resize(self.node, self.cores, cores)
        self.cores = cores
        return dur

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        ray = _ray()
        try:
            if not self._dead:
                ray.get(self.actor.stop.remote(), timeout=10)
        except Exception as e:  # dead node or actor: nothing left to stop
            log.info("stopping %s on %s: %s", self.variant, self.node[:8], e)
        finally:
            ray.kill(self.actor, no_restart=True)
            self.placement.release(self.node, self.cores)

    def alive(self) -> bool:
        return not self._dead and not self._stopped


class RayFactory:
    """The gateway's ExecutorFactory for Ray: connects once to `address`, places replicas."""

    def __init__(self, address: str | None, cores_per_node: float | None = None) -> None:
        self.address = address
        self.placement = RayPlacement(cores_per_node)
        self._lock = threading.Lock()

    def connect(self) -> None:
        ray = _ray()
        with self._lock:
            if not ray.is_initialized():
                ray.init(address=self.address, log_to_driver=False, include_dashboard=False)

    def __call__(self, variant: str, cores: float) -> RayExecutor:
        self.connect()
        return RayExecutor(self.placement, variant, cores)


class RayActuator(LocalActuator):
    """Plans applied through the gateway to Ray actors; capacity = the live cluster's."""

    name = "ray"

    def __init__(self, gateway: Any, factory: RayFactory) -> None:
        super().__init__(gateway)
        self.factory = factory

    def capacity(self) -> Capacity:
        self.factory.connect()
        return self.factory.placement.capacity()


async def wait_ready(gateway: Any, stage: str, replicas: int, timeout_s: float = 120.0) -> None:
    """Wait until `stage` has `replicas` ready replicas (tests, CLI)."""
    clock: Clock = getattr(gateway, "clock", MonotonicClock())
    t0 = clock.now()
    while gateway.metrics_snapshot()[stage].replicas != replicas:
        if clock.now() - t0 > timeout_s:
            raise TidalError(f"stage {stage!r} did not reach {replicas} replicas in {timeout_s} s")
        await asyncio.sleep(0.1)
