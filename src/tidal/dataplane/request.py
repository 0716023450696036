"""What a lane's scheduler queues, and its two verdicts.

`QueuedRequest` is the scheduler's view of one request at one stage: the absolute deadline
(carried unchanged through every stage), its size in rows and bytes (what the batcher's
latency prediction and the hardening issue's queue caps count), and how many times it was
retried after a replica died. Drivers subclass it to carry their payload: the live data plane
adds the input tensors and the answer future (`tidal.dataplane.replica.LiveRequest`), the
simulator uses it as is. Named tensors and a pinned model version have their fields here so
the protocol front ends can fill them without touching the scheduler.

`Refused` is both the scheduler's refusal verdict (returned by `GroupScheduler.push`) and the
exception the live data plane raises to answer a request without a result (HTTP `status`,
violation `cause`, `reason`, optional `retry_after_s`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tidal.core.request import Request


@dataclass(slots=True, eq=False)
class QueuedRequest(Request):
    """A request inside one lane. `rows`/`nbytes`: its size; `retries`: replays so far;
    `stage_arrival`: when it reached this stage (clock seconds); `inputs`: named tensors
    (None when the payload is a single tensor); `version`: a pinned model version."""

    rows: int = 1
    nbytes: int = 0
    retries: int = 0
    stage_arrival: float = 0.0
    inputs: dict[str, Any] | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Admitted:
    """`push` accepted the request; `predicted_finish` is admission's estimate (inf when
    admission is off)."""

    predicted_finish: float


class Refused(Exception):
    """A request answered without a result: HTTP `status`, violation `cause`, `reason`."""

    def __init__(
        self, status: int, cause: str, reason: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.cause = cause
        self.reason = reason
        self.retry_after_s = retry_after_s


ADMITTED_NO_CHECK = Admitted(float("inf"))
