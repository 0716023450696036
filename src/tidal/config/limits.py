"""Hardening limits of `tidal serve`: the machine the plans must fit, queue bounds, the watchdog.

Mounted as ``ServeConfig.limits`` (YAML key ``limits:``). Every field has a bound and a
default; `None` means "derived from this machine" and is resolved by the ``*_resolved``
methods, which are what the data plane reads:

- ``capacity_cores``: cores plans may use in total (default: the CPUs this process may run on);
  one replica may not have more than this either (one node here).
- ``max_replicas``: replicas of all stages and variants together (default ``4 x cores``, at
  least 4: a worker process costs 50-150 MB of RSS, so a plan cannot fork-bomb the host).
- ``memory_budget_mb``: bytes of request payload that may be queued in the whole gateway
  (default 256 MB); each (stage, variant) lane gets an equal share as its ``queue_bytes`` cap
  unless set, and ``queue_rows`` defaults to that share divided by the lane's row size, at most
  ``1 << 20`` rows.
- ``watchdog_factor`` / ``watchdog_grace_ms``: a batch running past max(factor x predicted,
  deadline + grace) marks its replica sick; ``stall_ms``: a running batch whose worker made no
  CPU progress (or is stopped) for this long past its predicted latency marks it sick too.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

MAX_DERIVED_ROWS = 1 << 20


def machine_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not os.cpu_count())."""
    return len(os.sched_getaffinity(0)) or 1


class LimitsConfig(BaseModel):
    """Bounds on plans, queues and batches (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    capacity_cores: float | None = Field(
        default=None,
        gt=0,
        le=4096,
        description="Cores admin plans may use in total; default: this machine's CPUs.",
    )
    max_replicas: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Replicas of all stages together; default max(4, 4 x capacity cores).",
    )
    memory_budget_mb: float = Field(
        default=256.0,
        gt=0,
        le=1 << 20,
        description="Request payload bytes that may be queued in the gateway, in MB.",
    )
    queue_rows: int | None = Field(
        default=None,
        ge=1,
        le=1 << 30,
        description="Rows queued per (stage, variant) lane; default from the memory budget.",
    )
    queue_bytes: int | None = Field(
        default=None,
        ge=1024,
        le=1 << 40,
        description="Payload bytes queued per lane; default: memory budget / lanes.",
    )
    watchdog_factor: float = Field(
        default=3.0, ge=1.0, le=100.0, description="Batch overdue past factor x predicted."
    )
    watchdog_grace_ms: float = Field(
        default=500.0, ge=0, le=600_000, description="... and past its deadline + this."
    )
    stall_ms: float = Field(
        default=750.0,
        ge=50,
        le=600_000,
        description="A running batch's worker stopped or without CPU progress this long past "
        "the predicted latency: sick.",
    )

    # Connections (read by the server runner, tidal.dataplane.server: issue 14 implements them)
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Request line + headers must arrive within "
        "this (from the first byte); else 408 and close.",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="The whole body must arrive within this "
        "after the headers (a Content-Length larger than the body): 408 and close.",
    )
    idle_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="A new connection that sends no byte for "
        "this long is closed (before its first request).",
    )
    keepalive_timeout_s: float = Field(
        default=5.0, gt=0, le=3600, description="Idle keep-alive connections are closed after."
    )
    max_connections: int | None = Field(
        default=None,
        ge=16,
        le=10_000_000,
        description="Open connections; past it the "
        "idle ones are shed first. Default: 90% of the descriptor limit after raising it.",
    )
    fd_limit: int | None = Field(
        default=None,
        ge=1024,
        le=10_000_000,
        description="RLIMIT_NOFILE to raise the soft limit to at start (default: the hard limit).",
    )

    def capacity_resolved(self) -> float:
        return float(self.capacity_cores) if self.capacity_cores else float(machine_cpus())

    def max_replicas_resolved(self) -> int:
        if self.max_replicas is not None:
            return self.max_replicas
        return max(4, int(4 * self.capacity_resolved()))

    def lane_bytes(self, lanes: int) -> int:
        """The queued-bytes cap of one lane when the gateway has `lanes` lanes."""
        if self.queue_bytes is not None:
            return self.queue_bytes
        return max(1024, int(self.memory_budget_mb * (1 << 20)) // max(1, lanes))

    def lane_rows(self, lanes: int, row_bytes: int) -> int:
        """The queued-rows cap of one lane whose rows are `row_bytes` bytes each."""
        if self.queue_rows is not None:
            return self.queue_rows
        return max(1, min(MAX_DERIVED_ROWS, self.lane_bytes(lanes) // max(1, row_bytes)))


__all__ = ["LimitsConfig", "machine_cpus"]
