"""The Ray substrate: replicas as Ray actors, with capacity-true placement. Tidal's Ray calls
are here, in `tidal.control.ray_factory` (the gateway's executor factory),
`tidal.control.ray_connect` (connecting, the placement authority) and in
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
  ``grow_timeout_s``; shrinking swaps the holds for one of the new size. A growth the node
  has no room for (another replica holds it) **moves** the replica instead, make before
  break: a replica of the new size starts on a node with room and the executor takes it
  over before the old one stops (`RayExecutor._move_or_refuse`); refused, the replica
  unchanged, only when no node has room.
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
import itertools
import logging
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
    _ray,
    _remove,
    authority,
    connect,
)
from tidal.control.ray_factory import RayFactoryBase
from tidal.control.ray_worker import DirectWorker, kernel_id, open_channels, shares
from tidal.core.capacity import Capacity
from tidal.core.errors import TidalError
from tidal.core.plan import Plan
from tidal.dataplane.worker import START_TIMEOUT_S, WorkerDied

log = logging.getLogger("tidal.control.ray")
SLOW_START_S = 3.0
"""A start slower than this is logged with its phases (placed: the hold; actor: the standby
or a new actor answering; granted: the authority's CPUs; ready: the worker's READY)."""


_INCARNATION: tuple[str, ...] = ("replica_id", "_holds", "actor", "direct", "node", "cpus")
_INCARNATION += ("pid", "mechanism", "cores", "cold_start_s")
"""The fields of one placed replica (`RayExecutor._move_or_refuse` swaps them)."""


def kept_holds(holds: list[Any], cores: float) -> list[Any] | None:
    """The largest subset of `holds` (placement groups of one CPU bundle) that holds exactly
    `cores`, or None: a shrink back to a size held before some growths releases their holds
    and waits for no new one (Ray places a new group in its own time, more so under load)."""
    sizes = [float(pg.bundle_specs[0].get("CPU", 0.0)) for pg in holds]
    for r in range(len(holds) - 1, 0, -1):
        for idx in itertools.combinations(range(len(holds)), r):
            if abs(sum(sizes[i] for i in idx) - cores) <= 1e-6:
                return [holds[i] for i in idx]
    return None


class NoRoom(TidalError):
    """No node has the cores for a growth now (`RayExecutor.resize` asks again)."""


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
        avoid: str | None = None,
    ) -> None:
        """`avoid`: a move (`resize`): start on a node other than `avoid` that has the cores
        free, or TidalError at once; never pending, never where Ray chooses."""
        ray = _ray()
        self.factory = factory
        self.variant = variant
        self.cores = cores
        self.grow_timeout_s = grow_timeout_s
        self.room_wait_s = 2.0
        self.replica_id = f"{variant}-{uuid.uuid4().hex[:10]}"
        self._holds: list[Any] = []
        self._dead = False
        self._stopped = False
        self.actor: Any = None
        self.direct: DirectWorker | None = None
        self.cold_start_s = 0.0
        clock = factory.clock
        marks = [("begin", clock.now())]  # the start's phases, logged when it was slow
        with factory.starting():  # no standby replaced meanwhile (RayFactoryBase._spare)
            claim = factory.claim(cores, avoid=avoid)
            if avoid is not None and claim is None:
                raise NoRoom(f"no node but {avoid[:8]} has {cores:g} cores free")
            try:
                pg = _hold(cores, claim)
                self._holds.append(pg)
                ready, _ = ray.wait([pg.ready()], timeout=spread_timeout_s if claim else 0.0)
                if avoid is not None and not ready:
                    raise TidalError(f"Ray did not place {cores:g} cores on node {claim}")
                if claim and not ready:  # another gateway took the node: let Ray choose
                    self._holds.remove(pg)
                    _remove(pg)
                    pg = _hold(cores, None)
                    self._holds.append(pg)
                if not ready:
                    with factory.idle():  # pending: no start runs while it waits for room
                        ready, _ = ray.wait([pg.ready()], timeout=pending_timeout_s)
                if not ready:
                    raise TidalError(
                        f"replica of {variant} ({cores:g} cores) stayed pending for "
                        f"{pending_timeout_s:g} s: no Ray node had the cores"
                    )
                self.node = _hold_node(pg)
                marks.append(("placed", clock.now()))
                self.actor = factory.take_standby(self.node)
                at = ray.get(self.actor.where.remote(), timeout=120)
                marks.append(("actor", clock.now()))
                if at.get("nice", 0) > 0:
                    why = "Ray's worker niceness; docs/deploy.md"
                    log.warning("replica %s: its Ray actor runs at nice %s (%s)",
                                self.replica_id, at["nice"], why)  # fmt: skip
                node, cpu_ids = at["node"], at["cpus"]
                grant = self._reserve(node, cores, cpu_ids, at["kernel"]["boot"])
                self.cpus: tuple[int, ...] = tuple(grant.cpus)
                marks.append(("granted", clock.now()))
                info = self._start_worker(at, cores)
                marks.append(("ready", clock.now()))
            except BaseException:
                self._cleanup()
                raise
            finally:
                factory.unclaim(claim, cores)
        self.pid: int = int(info["pid"])
        self.mechanism = str(info["mechanism"])
        self.start_phases = {b[0]: round(b[1] - a[1], 3) for a, b in itertools.pairwise(marks)}
        took = marks[-1][1] - marks[0][1]
        if took > SLOW_START_S:
            phases = ", ".join(f"{k} +{v:.2f}" for k, v in self.start_phases.items())
            log.warning("replica %s (%g cores) on node %s started in %.2f s: %s",
                        self.replica_id, cores, self.node[:8], took, phases)  # fmt: skip
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

    def progress(self) -> tuple[str, int, int] | None:
        """The watchdog's probe where this gateway shares the worker's pid namespace."""
        return self.direct.progress() if self.direct is not None else None

    def kill(self) -> None:
        """SIGKILL the worker through its actor (the watchdog found it sick): its connection
        closes and pending batches fail with WorkerDied."""
        if self.direct is not None:
            self.direct.kill()

    def resize(self, cores: float) -> float:
        """Resize in place, holding the cores in Ray first; WorkerDied if the actor is gone.
        A growth the node has no room for (the book, less the starts in flight from this
        gateway) moves the replica instead (`_move_or_refuse`). While no node has the room,
        it is asked again for `room_wait_s` (replicas a plan retires free their cores once
        their batch is done: measured, a 1/3 -> 2/3 growth refused at once stayed refused
        for the plan's life), then TidalError, the replica unchanged."""
        fac = self.factory
        deadline = fac.clock.now() + self.room_wait_s
        while True:
            try:
                return self._resize_once(cores)
            except NoRoom as e:
                if fac.clock.now() >= deadline or fac._closing.wait(0.1):
                    raise TidalError(str(e)) from None

    def _resize_once(self, cores: float) -> float:
        ray = _ray()
        auth, fac = self.factory.authority, self.factory
        old = self.cores
        room = fac.claim(cores - old, only=self.node) if cores > old + 1e-9 else self.node
        try:
            grant = None
            if room is not None:
                grant = ray.get(auth.resize.remote(self.replica_id, cores), timeout=30)
            if grant is None:
                why = (
                    f"no room on node {self.node[:8]} to resize {self.variant} {old:g} -> "
                    f"{cores:g} cores (used {ray.get(auth.used.remote(), timeout=30)})"
                )
                return self._move_or_refuse(cores, why)
            try:
                self._rehold(old, cores)
            except TidalError as e:
                ray.get(auth.resize.remote(self.replica_id, old), timeout=30)
                return self._move_or_refuse(cores, str(e))
        finally:
            if room is not None and cores > old + 1e-9:
                fac.unclaim(room, cores - old)
        try:
            dur = float(ray.get(self.actor.resize.remote(cores, list(grant.cpus)), timeout=60))
        except ray.exceptions.RayActorError as e:
            self._dead = True
            raise WorkerDied(f"Ray actor of {self.variant} died during resize: {e}") from e
        self.cores, self.cpus = cores, tuple(grant.cpus)
        return dur

    def _move_or_refuse(self, cores: float, why: str) -> float:
        """Make before break: a replica of `cores` on another node with them free (the warm
        actor there), then this executor takes it over and the old one stops (SHUTDOWN, its
        holds and grant released); the data plane keeps one replica throughout. Returns the
        move's duration; TidalError naming `why` (unchanged) when no node has the room or
        the start fails. Only growths move: shrinking always fits in place. (Measured: a
        classify replica that shared its 2/3-core node with nlp stayed at 1/3 core through
        the surge while another node was idle.)"""
        if cores <= self.cores + 1e-9:
            raise TidalError(why)
        t0 = self.factory.clock.now()
        try:
            new = RayExecutor(self.factory, self.variant, cores, avoid=self.node,
                              grow_timeout_s=self.grow_timeout_s)  # fmt: skip
        except TidalError as e:
            cls = NoRoom if isinstance(e, NoRoom) else TidalError
            raise cls(f"{why}; not moved: {e}") from None
        log.warning("replica %s of %s: moved from node %s (%g cores) to node %s (%g cores): %s",
                    self.replica_id, self.variant, self.node[:8], self.cores, new.node[:8],
                    cores, why)  # fmt: skip
        for k in _INCARNATION:
            mine, theirs = getattr(self, k), getattr(new, k)
            setattr(self, k, theirs)
            setattr(new, k, mine)
        self.factory.track(self)  # the swapped ids: each executor under its new id
        self.factory.track(new)
        new.stop()  # the old incarnation, now idle: the data plane serialises its operations
        return self.factory.clock.now() - t0

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
            keep = kept_holds(self._holds, new)
            if keep is not None:  # back to the size before some growths: release their holds
                for pg in self._holds:
                    if not any(pg is k for k in keep):
                        _remove(pg)
                self._holds = keep
                return
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


class RayFactory(RayFactoryBase):
    """The gateway's ExecutorFactory for Ray (`RayFactoryBase` holds the cluster view):
    ``factory(variant, cores)`` connects once and builds a `RayExecutor`."""

    def __call__(self, variant: str, cores: float) -> RayExecutor:
        self.connect()
        return RayExecutor(self, variant, cores, pending_timeout_s=self.pending_timeout_s)


__all__ = ["AUTHORITY_NAME", "NAMESPACE", "PlacementAuthority", "RayActuator", "RayExecutor"]
__all__ += ["RayFactory", "authority", "connect", "wait_ready"]
