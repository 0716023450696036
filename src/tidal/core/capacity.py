"""The cluster's capacity and the changes still in progress: read by planners and substrates."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pending:
    """Changes still in progress: replicas starting (per stage) and resizes not yet applied."""

    starting_replicas: dict[str, int] = field(default_factory=dict)
    resizing_stages: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Capacity:
    """The cluster: `nodes` nodes of `cores_per_node` cores each."""

    nodes: int = 1
    cores_per_node: float = 2.0

    @property
    def total_cores(self) -> float:
        return self.nodes * self.cores_per_node


__all__ = ["Capacity", "Pending"]
