"""Pure autoscaling policies. See tidal.planners.base for the protocol and registry.

Importing this package registers every policy: ``tidal.planners.create(name, **kwargs)``
builds one, ``tidal.planners.Governed(planner, bounds=Bounds(...))`` wraps it with bounds,
decision interval, cool-downs and stabilization windows (docs/planners.md).
"""

# Registration side effects: one module per policy.
from tidal.planners import infadapter as _infadapter  # noqa: F401
from tidal.planners import ipa as _ipa  # noqa: F401
from tidal.planners import sponge as _sponge  # noqa: F401
from tidal.planners import themis as _themis  # noqa: F401
from tidal.planners import tidal as _tidal  # noqa: F401
from tidal.planners.base import (
    RESIZE_IN_PLACE,
    RESIZE_RECREATE,
    Capacity,
    Pending,
    PlanContext,
    Planner,
    StageCandidates,
    StageObservation,
    available,
    create,
    register,
    resize_mode,
)
from tidal.planners.baselines import fa2 as _fa2  # noqa: F401
from tidal.planners.baselines import hpa as _hpa  # noqa: F401
from tidal.planners.baselines import msp as _msp  # noqa: F401
from tidal.planners.baselines import rayserve as _rayserve  # noqa: F401
from tidal.planners.baselines import rim as _rim  # noqa: F401
from tidal.planners.baselines import static as _static  # noqa: F401
from tidal.planners.baselines import vpa as _vpa  # noqa: F401
from tidal.planners.wrapper import Bounds, Governance, Governed, GovernedState

__all__ = [
    "RESIZE_IN_PLACE",
    "RESIZE_RECREATE",
    "Bounds",
    "Capacity",
    "Governance",
    "Governed",
    "GovernedState",
    "Pending",
    "PlanContext",
    "Planner",
    "StageCandidates",
    "StageObservation",
    "available",
    "create",
    "register",
    "resize_mode",
]
