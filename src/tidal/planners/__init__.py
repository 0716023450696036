"""Pure autoscaling policies. See tidal.planners.base for the protocol and registry."""

from tidal.planners.base import (
    Capacity,
    Pending,
    PlanContext,
    Planner,
    StageCandidates,
    StageObservation,
    available,
    create,
    register,
)

__all__ = [
    "Capacity",
    "Pending",
    "PlanContext",
    "Planner",
    "StageCandidates",
    "StageObservation",
    "available",
    "create",
    "register",
]
