"""Shared vocabulary of Tidal. Imports nothing else from tidal.

Holds the clock, plans, latency profiles, variants and pipeline specs that every
substrate (live, Ray, simulator) and every planner share.
"""

from tidal.core.clock import Clock, MonotonicClock, SimClock
from tidal.core.errors import TidalError
from tidal.core.pipeline import PipelineSpec, StageSpec
from tidal.core.plan import Plan, StagePlan, VariantWeight
from tidal.core.profile import LatencyFit, ProfilePoint, ProfileSet, VariantProfile
from tidal.core.request import Request

__all__ = [
    "Clock",
    "LatencyFit",
    "MonotonicClock",
    "PipelineSpec",
    "Plan",
    "ProfilePoint",
    "ProfileSet",
    "Request",
    "SimClock",
    "StagePlan",
    "StageSpec",
    "TidalError",
    "VariantProfile",
    "VariantWeight",
]
