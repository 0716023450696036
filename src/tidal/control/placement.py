"""The cluster's placement book: cores per node and CPU pinning without overlap. Pure.

One book exists per Ray cluster, inside the detached placement-authority actor
(`tidal.control.ray_substrate`); every replica of every gateway reserves through it, so no
counter is private to one actor process.

Contract:
- ``set_nodes({node: NodeSpec})`` declares the alive nodes, their cores (Ray's logical CPUs)
  and the CPU ids a process there may use. Grants on a node that left are dropped and their
  replica ids returned.
- ``reserve(replica, node, cores)`` books `cores` on `node` and chooses its CPU set, or returns
  None (nothing booked) when the node lacks the cores or no CPU set fits. A replica holds one
  grant; reserving again for the same id replaces its grant atomically (all or nothing).
- CPU sets: a replica of `c` cores gets ``n >= ceil(c)`` CPUs, each carrying ``c / n`` of its
  load; no CPU carries more than 1.0 in total. So replicas with whole cores never share a
  CPU, and fractional replicas share one only within its single core. When ``ceil(c)`` CPUs
  do not fit (fragmentation), wider sets are tried, up to all the node's CPUs.
- Nodes on one kernel (``NodeSpec.host``: several raylets on one machine, e.g. a local
  multi-node cluster, or pods without a cpuset) share its CPU ids: among the CPUs that fit
  on the node, the least loaded *on the host* are chosen first, so three 1-replica nodes on
  a 2-CPU machine do not all pin CPU 0 (measured before: every node's first replica did).
  The hard limit (no CPU above 1.0) stays per node: the node's cores are what Ray grants.
- ``resize(replica, cores)`` keeps the current CPUs when they still fit, else re-chooses.
- ``release(replica)`` frees its grant (idempotent).

Nothing here reads a clock or calls Ray; the authority actor and tests drive it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tidal.core.capacity import Capacity

_EPS = 1e-9


@dataclass(frozen=True)
class NodeSpec:
    """One node: its cores (Ray's logical CPU resource) and the CPU ids usable there."""

    cores: float
    cpu_ids: tuple[int, ...]
    host: str = ""
    """The kernel the node runs on (its boot id); '' = a kernel of its own."""


@dataclass(frozen=True)
class Grant:
    """What one replica holds: `cores` on `node`, pinned to `cpus`."""

    replica: str
    node: str
    cores: float
    cpus: tuple[int, ...]


@dataclass
class _Node:
    spec: NodeSpec
    grants: dict[str, Grant] = field(default_factory=dict)

    @property
    def used(self) -> float:
        return sum(g.cores for g in self.grants.values())

    def cpu_load(self, skip: str | None = None) -> dict[int, float]:
        load = dict.fromkeys(self.spec.cpu_ids, 0.0)
        for g in self.grants.values():
            if g.replica == skip or not g.cpus:
                continue
            share = g.cores / len(g.cpus)
            for c in g.cpus:
                load[c] = load.get(c, 0.0) + share
        return load


def _choose(
    load: dict[int, float],
    cores: float,
    prefer: tuple[int, ...] = (),
    host_load: dict[int, float] | None = None,
) -> tuple[int, ...] | None:
    """A CPU set carrying `cores` with no CPU above 1.0 in `load`, or None. Keeps `prefer` if
    it fits. `host_load` (the node's host, all its nodes) orders the CPUs: least loaded on
    the host first, then on the node, stable by id."""
    if prefer and len(prefer) >= math.ceil(cores - _EPS):
        share = cores / len(prefer)
        if all(c in load and load[c] + share <= 1.0 + _EPS for c in prefer):
            return prefer
    host = host_load or {}
    ids = sorted(load, key=lambda c: (host.get(c, 0.0), load[c], c))
    for n in range(max(1, math.ceil(cores - _EPS)), len(ids) + 1):
        share = cores / n
        pick = [c for c in ids if load[c] + share <= 1.0 + _EPS][:n]
        if len(pick) == n:
            return tuple(sorted(pick))
    return None


class PlacementBook:
    """The cluster's cores and CPU pins (see the module docstring)."""

    def __init__(self) -> None:
        self._nodes: dict[str, _Node] = {}
        self._where: dict[str, str] = {}  # replica -> node

    # ----------------------------------------------------------------- nodes
    def set_nodes(self, nodes: dict[str, NodeSpec]) -> list[str]:
        """Declare the alive nodes; returns the replicas whose node left (grants dropped)."""
        lost: list[str] = []
        for nid in list(self._nodes):
            if nid not in nodes:
                lost += list(self._nodes[nid].grants)
                for r in self._nodes[nid].grants:
                    self._where.pop(r, None)
                del self._nodes[nid]
        for nid, spec in nodes.items():
            if spec.cores < 0 or (spec.cores > 0 and not spec.cpu_ids):
                raise ValueError(f"node {nid!r}: cores={spec.cores} with cpu_ids={spec.cpu_ids}")
            if nid in self._nodes:
                self._nodes[nid].spec = spec
            else:
                self._nodes[nid] = _Node(spec)
        return sorted(lost)

    def add_node(self, node: str, spec: NodeSpec) -> None:
        """Declare one node (or update its spec), keeping its grants."""
        if node in self._nodes:
            self._nodes[node].spec = spec
        else:
            self._nodes[node] = _Node(spec)

    def nodes(self) -> dict[str, NodeSpec]:
        return {n: st.spec for n, st in sorted(self._nodes.items())}

    # ------------------------------------------------------------- reserving
    def free(self, node: str) -> float:
        st = self._nodes.get(node)
        return 0.0 if st is None else max(0.0, st.spec.cores - st.used)

    def reserve(self, replica: str, node: str, cores: float) -> Grant | None:
        """Book `cores` on `node` for `replica` (replacing its grant), or None if it can't."""
        if not cores > 0:
            raise ValueError(f"cores must be > 0, got {cores!r}")
        st = self._nodes.get(node)
        if st is None:
            return None
        old = self.grant(replica)
        if old is not None and old.node != node:
            return None  # a replica never moves; the caller releases and starts a new one
        held = old.cores if old is not None else 0.0
        if st.used - held + cores > st.spec.cores + _EPS:
            return None
        host = self._host_load(node, replica)
        cpus = _choose(st.cpu_load(skip=replica), cores, old.cpus if old else (), host)
        if cpus is None:
            return None
        g = Grant(replica, node, cores, cpus)
        st.grants[replica] = g
        self._where[replica] = node
        return g

    def _host_load(self, node: str, skip: str) -> dict[int, float]:
        """Per CPU id, the load of every node on `node`'s host (only `node` without a host)."""
        host = self._nodes[node].spec.host
        out: dict[int, float] = {}
        for nid, st in self._nodes.items():
            if nid == node or (host and st.spec.host == host):
                for c, x in st.cpu_load(skip=skip).items():
                    out[c] = out.get(c, 0.0) + x
        return out

    def resize(self, replica: str, cores: float) -> Grant | None:
        """Change `replica`'s cores on its node (keeping its CPUs when they fit), or None."""
        old = self.grant(replica)
        if old is None:
            return None
        return self.reserve(replica, old.node, cores)

    def release(self, replica: str) -> Grant | None:
        node = self._where.pop(replica, None)
        if node is None or node not in self._nodes:
            return None
        return self._nodes[node].grants.pop(replica, None)

    # --------------------------------------------------------------- reading
    def grant(self, replica: str) -> Grant | None:
        """`replica`'s grant, or None when it holds nothing."""
        node = self._where.get(replica)
        return None if node is None else self._nodes[node].grants.get(replica)

    def grants(self) -> list[Grant]:
        return [g for st in self._nodes.values() for g in st.grants.values()]

    def used(self) -> dict[str, float]:
        return {n: round(st.used, 6) for n, st in sorted(self._nodes.items())}

    def capacity(self) -> Capacity:
        """The planners' view: alive nodes with cores, at the smallest node's size."""
        sizes = [st.spec.cores for st in self._nodes.values() if st.spec.cores > 0]
        if not sizes:
            return Capacity(nodes=1, cores_per_node=0.0)
        return Capacity(nodes=len(sizes), cores_per_node=min(sizes))


__all__ = ["Grant", "NodeSpec", "PlacementBook"]
