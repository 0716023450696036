"""`SchedulerConfig`: how a lane (`tidal.dataplane.scheduler.GroupScheduler`) admits, batches
and pipelines. Validated pydantic options; re-exported by `tidal.dataplane.scheduler`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SchedulerConfig(BaseModel):
    """How a lane admits, batches and pipelines. Validated; errors name the field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    admission: bool = Field(
        default=True,
        description="Refuse at arrival a request whose deadline cannot be met (off: serve "
        "late, as `serve_late`).",
    )
    expire: bool = Field(
        default=True, description="Drop queued requests whose deadline passed (answer 504)."
    )
    expire_timer: bool = Field(
        default=True,
        description="Wake at the queue head's deadline so it is answered at once; off: "
        "expired requests are found at the lane's next event (same outcomes, fewer events; "
        "the simulator's default).",
    )
    margin: float = Field(
        default=1.0, gt=0.0, le=10.0, description="Admission multiplies predicted l(b,c) by it."
    )
    hold_fraction: float = Field(
        default=0.1,
        ge=0.0,
        le=10.0,
        description="Batcher hold window (rule 4b of tidal.dataplane.batcher) as a fraction "
        "of l(1, c); 0 turns it off. A/B at 0.5 for ResNet-18 at 8 connections: no gain here.",
    )
    hold_anchor: Literal["latest", "head"] = Field(
        default="latest",
        description="latest: the hold window starts at the latest of the head's arrival, the "
        "lane's latest admission and its latest batch completion (wait while a burst keeps "
        "arriving; give clients just answered a moment to come back); head: at the head's "
        "arrival.",
    )
    pipeline_depth: int = Field(
        default=1,
        ge=1,
        le=4,
        description="Batches in flight per replica. With 2 a second batch is sent only when "
        "the first is predicted to end within prefetch_s (hides the dispatch round trip; A/B "
        "runs at 2 showed no gain within this machine's noise).",
    )
    prefetch_s: float = Field(
        default=0.002, ge=0.0, le=1.0, description="See pipeline_depth (seconds)."
    )
    max_retries: int = Field(
        default=2, ge=0, le=100, description="Replays of a request whose replica died mid-batch."
    )
    adapt_latency: bool = Field(
        default=False,
        description="Scale predicted latencies by the measured/predicted ratio of recent "
        "batches (admission at the replicas' real service rate; issue 13). The live gateway "
        "turns it on; the simulator's replicas take the profile's time, so it stays off.",
    )
    late_target: float = Field(
        default=0.0,
        ge=0.0,
        lt=0.5,
        description="Feedback margin (issue 13; tidal.dataplane.calibration): admission "
        "stretches a request's predicted remaining time by a factor steered so that this "
        "share of the admitted requests end after their deadline. 0: off (the simulator's "
        "default: its replicas take the predicted time).",
    )
    batch_deadline: bool = Field(
        default=False,
        description="A batch keeps only the queue-head prefix whose predicted end (in rows, at "
        "the measured rate) meets the head's deadline: later arrivals that join a batch must "
        "not make the requests already in it late (1024-row requests in a batch of 8 "
        "requests). Admission prices the same rule. Off in the simulator (its fast mode "
        "mirrors the rules without it); the live gateway turns it on.",
    )
    expire_hopeless: bool = Field(
        default=False,
        description="At dispatch, a request that cannot finish by its stage deadline even in "
        "a batch of its own (predicted at the measured median rate from the batch's start) "
        "is expired (504) instead of run: its answer would be late whatever, and the replica "
        "time goes to requests that can still make theirs. Off in the simulator; the live "
        "gateway turns it on.",
    )
    price_overrun: bool = Field(
        default=False,
        description="Admission sees a replica whose batch runs past its predicted end as busy "
        "until the batch's expected end (tidal.dataplane.calibration `overrun_end`), not as "
        "free now: the arrivals behind a long batch are priced from when it will really "
        "end. Off in the simulator (its fast mode does not mirror it); the live gateway "
        "turns it on.",
    )


__all__ = ["SchedulerConfig"]
