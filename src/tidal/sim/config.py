"""Simulation settings (validated) and the per-request outcome codes.

Time inside the simulator is integer microseconds (``*_us``); the reference mode hands the
dataplane objects seconds (``us / 1e6``) through a ``SimClock``, and both modes quantize every
event time to the microsecond the same way, so they agree request by request.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tidal.dataplane.scheduler import SchedulerConfig

US = 1_000_000

# Outcome codes (per request).
OK = 0
LATE = 1  # completed after its deadline
REFUSED = 2  # refused by admission control at a stage
EXPIRED = 3  # deadline passed while it waited in a queue
UNFINISHED = 4  # still in the system when the simulation ended (counted as a violation)
CAUSES = ("ok", "late", "refused", "expired", "unfinished")

# The simulator's lane config: the scheduler's own defaults (tidal.dataplane.scheduler,
# which the live gateway runs too) except two, so that `tidal simulate` keeps its figures
# and its speed: no batcher hold window (the gateway holds 0.1 x l(1, c)) and no wake-up at
# the queue head's deadline (expired requests are found at the lane's next event: the same
# outcomes with fewer events). `tidal validate` runs the gateway's own config instead.
SIM_SCHEDULER_OVERRIDES: dict[str, Any] = {"hold_fraction": 0.0, "expire_timer": False}


def sim_scheduler(**fields: Any) -> SchedulerConfig:
    """`SIM_SCHEDULER` with `fields` changed, validated (errors name the field)."""
    return SchedulerConfig.model_validate({**SIM_SCHEDULER_OVERRIDES, **fields})


SIM_SCHEDULER = sim_scheduler()


class SimConfig(BaseModel):
    """Knobs of one simulation run. Every field has a bound; errors name the field."""

    model_config = ConfigDict(frozen=True)

    nodes: int = Field(default=1, ge=1, le=100_000, description="Nodes in the cluster.")
    cores_per_node: float = Field(default=16.0, gt=0, le=4096, description="Cores per node.")
    slo_ms: float = Field(default=750.0, gt=0, le=3_600_000, description="End-to-end SLO.")
    dynamic_slo: bool = Field(
        default=False, description="Per-request budgets from the LTE log (Sponge)."
    )
    seed: int = Field(default=0, ge=0, description="Seeds arrivals, SLOs and latency noise.")
    noise: bool = Field(
        default=True, description="Latency noise: lognormal, median l(b,c), p99 = p99_ratio x."
    )
    resize_s: float | None = Field(
        default=None, ge=0, description="In-place resize delay; None = the profile's resize_s."
    )
    warm_start: bool = Field(
        default=True, description="The first plan's replicas are ready at t=0 (no cold start)."
    )
    history_s: int = Field(default=1200, ge=10, description="Rate history kept for planners.")
    drain_s: float = Field(
        default=30.0, ge=0, description="Simulated time after the trace ends to let queues drain."
    )
    scheduler: SchedulerConfig = Field(
        default=SIM_SCHEDULER,
        description="Every lane's GroupScheduler config (tidal.dataplane.scheduler: "
        "admission, hold window, pipelining, learned service rate), the same model the "
        "live gateway validates. Default `SIM_SCHEDULER`; build others with "
        "`sim_scheduler(**fields)`; `tidal validate` passes the live gateway's own.",
    )
    gateway: bool = Field(
        default=False,
        description="Predict as the live gateway does (reference mode; `tidal validate`): "
        "the schedulers plan with the profile given as `predict_profiles` with l(b,c) "
        "uncapped (the fit as the gateway loads it). The scheduler itself is the same in "
        "every mode (tidal.dataplane.scheduler).",
    )
    skip_infeasible: bool = Field(
        default=True,
        description="The one Controller's rule, live and simulated "
        "(tidal.control.controller): a plan the planner flags infeasible (its best effort "
        "under overload) is applied when it fits the nodes, else the plan in force is kept; "
        "False also applies a flagged plan that does not fit, its extra replicas pending "
        "(the live controller's --best-effort).",
    )
    calibrate: bool = Field(
        default=False,
        description="The controller's live calibration (tidal.control.controller, "
        "`calibrate`): the planner's profile is scaled per (stage, variant) by the ratio of "
        "the batches' simulated service time to the profile's l(b, c), learned as the run "
        "goes, as the live controller learns it from measured batches. With "
        "`predict_profiles` the planner starts from that profile (what the live system "
        "loads) while batches take the simulated profile's time. `tidal validate` sets it.",
    )
    cpu_quota: bool = Field(
        default=False,
        description="Simulate each fractional-core replica's CPU quota (reference mode; "
        "`tidal.sim.latency.quota_run`): its batches run at the speed of its ceil(c) CPUs "
        "(the profile's l(b, ceil(c))) while the worker's quota of c cores per 100-ms "
        "period lasts and are throttled to the period's end when it runs out, as a cgroup "
        "`cpu.max` does live; off: every batch takes l(b, c), the quota-bound mean. "
        "`tidal validate` reports a simulation with it (`sim_other_quota_model`).",
    )
    control_lead_s: float = Field(
        default=0.0,
        ge=0.0,
        le=3600.0,
        description="The control loop started this long before the trace (a live run's "
        "controller decides before the load starts): the planner decides at t=0, then at "
        "k x interval - control_lead_s; 0 = at k x interval.",
    )
    mode: Literal["auto", "reference", "fast"] = Field(
        default="auto",
        description="reference: the dataplane's EDFQueue/batcher/admission objects; fast: the "
        "compiled kernel (one stage, one variant, fixed SLO); auto: fast when it applies.",
    )
