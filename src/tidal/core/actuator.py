"""The one interface every substrate implements to apply a Plan: local, Ray and simulator.

Contract (declarative, non-blocking, like a Kubernetes object update):

- ``apply(plan)`` records `plan` as the target and starts the changes it needs (start
  replicas, resize in place, change batch and weights). It returns at once with an
  :class:`Actuation`; it never waits for a replica to warm up. Applying the plan already in
  force is a no-op (idempotent). A plan that can never fit the substrate is refused:
  ``Actuation.accepted`` is False with a ``reason`` naming the value, and the plan in force
  stays.
- The actuator sets ``Actuation.settled_at`` (clock seconds) once every change of that
  plan has taken effect (new replicas ready, old ones drained), so the controller can log the
  time to take effect. A later ``apply`` supersedes an unsettled one (``superseded=True``).
- ``current()`` is the plan in force: the last plan applied to the substrate, which the
  data plane keeps serving if the controller stops. A restarted controller starts from it.
- ``pending()`` says what is still changing (replicas starting per stage, stages resizing):
  the planners read it through ``PlanContext.pending``.
- ``capacity()`` is the substrate's node model (nodes x cores per node) for the planners.

Times come from the substrate's injected Clock (monotonic live, simulated in the simulator).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from tidal.core.capacity import Capacity, Pending
from tidal.core.plan import Plan


@dataclass
class Actuation:
    """The outcome of one ``Actuator.apply`` call.

    `requested_at` and `settled_at` are clock seconds; `settled_at` stays None until every
    change has taken effect (or forever if `accepted` is False or it was superseded).
    """

    plan: Plan
    requested_at: float
    accepted: bool = True
    reason: str = ""
    changed: bool = True
    settled_at: float | None = None
    superseded: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def time_to_effect_s(self) -> float | None:
        """Seconds from the request to the last change taking effect, or None if unsettled."""
        if self.settled_at is None:
            return None
        return max(0.0, self.settled_at - self.requested_at)


@runtime_checkable
class Actuator(Protocol):
    """Applies plans to a substrate (this machine's workers, Ray actors, simulated replicas)."""

    name: str

    def apply(self, plan: Plan) -> Actuation:
        """Start moving the substrate to `plan`; return at once (see the module contract)."""
        ...

    def current(self) -> Plan | None:
        """The plan in force, or None before any plan was applied."""
        ...

    def pending(self) -> Pending:
        """Changes still in progress (replicas starting, stages resizing)."""
        ...

    def capacity(self) -> Capacity:
        """Nodes x cores per node the planners may allocate."""
        ...
