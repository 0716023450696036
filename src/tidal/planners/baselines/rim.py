"""`rim`: IPA's RIM baseline: replicas fixed, the variant and batch of each stage tuned.

Faithful to IPA's description (the replica count of every stage is set once, here by
`replicas`, default 2; every 10 s the variants and batches are re-chosen by IPA's MILP with
that fixed n). Implemented as `tidal.planners.ipa.IPA` with ``fixed_replicas``; options whose
throughput with n replicas is below the load are excluded (infeasible -> flagged).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tidal.core.errors import TidalError
from tidal.planners.base import register
from tidal.planners.ipa import IPA, IpaCommonOptions


class RimOptions(IpaCommonOptions):
    """Options of `rim`: IPA's, with the fixed replica count `replicas`."""

    replicas: int = Field(2, ge=1, le=10**4, description="Replicas of every stage (fixed).")


@register("rim")
class RIM(IPA):
    """IPA's MILP with replicas fixed at `replicas` per stage."""

    name = "rim"
    interval_s = 10.0
    Options = RimOptions  # type: ignore[assignment]  # RIM fixes what IPA's fixed_replicas sets

    def __init__(self, replicas: int = 2, **kwargs: Any) -> None:
        if replicas < 1:
            raise TidalError(f"rim: replicas must be >= 1, got {replicas}")
        super().__init__(fixed_replicas=replicas, **kwargs)
