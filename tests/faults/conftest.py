"""Shared pieces of the fault suite: a noop gateway process and exact-count assertions.

Every scenario drives a real `tidal serve` process (real workers) with the checked open-loop
client (`tidal.bench.checked_load`) and asserts exact counts on both sides: each request sent
got exactly one answer (client) and arrived exactly once (server `arrivals`), nothing was
answered wrong, and at the end nothing is queued or running (0 orphaned).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tidal.bench.checked_load import Summary
from tidal.bench.gateway_proc import GatewayProcess


def echo_config(replicas: int = 2, cores: float = 0.5, batch: int = 8, **extra: Any) -> dict:
    return {
        "models": [{"name": "echo", "variants": ["noop"]}],
        "default_slo_ms": 2000,
        "plan": {
            "stages": [
                {
                    "stage": "echo",
                    "variants": [{"name": "noop"}],
                    "replicas": replicas,
                    "cores": cores,
                    "batch": batch,
                }
            ]
        },
        **extra,
    }


@pytest.fixture(scope="module")
def echo_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One noop gateway (2 replicas x 0.5 cores) per test module; restored to that plan by
    `reset_plan` between scenarios."""
    with GatewayProcess(echo_config(), Path(tmp_path_factory.mktemp("echo"))) as gw:
        yield gw


def reset_plan(gw: GatewayProcess, replicas: int = 2, cores: float = 0.5) -> None:
    plan = echo_config(replicas, cores)["plan"]
    status, body = gw.put_plan(plan)
    assert status == 200, body


def assert_exact(
    summary: Summary, before: dict[str, Any], after: dict[str, Any], stage: str = "echo"
) -> None:
    """Client and server agree: each request arrived once and got one answer; 0 wrong; 0 lost;
    nothing left queued or running."""
    n = len(summary.results)
    c = summary.counts
    assert sum(c.values()) == n
    assert c["wrong"] == 0 and c["lost"] == 0, c
    s0, s1 = before[stage], after[stage]
    assert s1["arrivals"] - s0["arrivals"] == n, (s1["arrivals"] - s0["arrivals"], n)
    served = c["ok"] + c["late"]
    assert s1["completions"] - s0["completions"] == served, (s1, s0, c)
    assert s1["queue_len"] == 0 and s1["in_flight"] == 0, s1
