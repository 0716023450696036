"""A request as it travels through the stage queues of a pipeline.

The deadline is absolute (clock seconds) and is carried unchanged through every stage:
Sponge's dynamic SLO means the client already subtracted its network time from the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Request:
    """One inference request.

    `arrival` and `deadline` are clock seconds; `payload` is opaque to queues and planners
    (the data plane stores tensors there, the simulator stores nothing).
    """

    id: int
    arrival: float
    deadline: float
    payload: Any = None
    stage_index: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def budget(self) -> float:
        """The total latency budget in seconds (deadline - arrival)."""
        return self.deadline - self.arrival

    def slack(self, now: float) -> float:
        """Seconds left before the deadline at time `now` (negative once late)."""
        return self.deadline - now
