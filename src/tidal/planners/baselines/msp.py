"""`msp`: InfAdapter's MS+ baseline: one variant per stage, the fewest cores that carry the load.

Reconstructed from the InfAdapter paper (model switching plus): the same objective, capacity
model, predictor margin and scale-down rule as `tidal.planners.infadapter`, restricted to one
variant per stage (``max_variants=1``), so it switches models but never mixes them.
Interval 30 s.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tidal.planners.base import register
from tidal.planners.infadapter import InfAdapter, InfAdapterOptions


class MspOptions(InfAdapterOptions):
    """Options of `msp`: InfAdapter's, with one variant per stage."""

    max_variants: int | None = Field(1, ge=1, le=64, description="Variants per stage (MS+: 1).")


@register("msp")
class MSP(InfAdapter):
    """InfAdapter restricted to a single variant per stage."""

    name = "msp"
    interval_s = 30.0
    Options = MspOptions

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_variants", 1)
        super().__init__(**kwargs)
