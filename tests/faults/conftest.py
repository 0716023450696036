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


@pytest.fixture(scope="session")
def echo_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One noop gateway (2 replicas x 0.5 cores) for the whole suite (a start costs seconds
    on a loaded 2-core machine); scenarios set the plan they need with `reset_plan`."""
    with GatewayProcess(echo_config(), Path(tmp_path_factory.mktemp("echo"))) as gw:
        yield gw


@pytest.fixture(scope="session")
def cnn_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One digits-cnn gateway (1 replica x 0.5 cores, batch 8; model `m`), whose cost is
    linear in rows: the overload and abandon scenarios share it."""
    from tidal.bench.overload import gateway_config

    # admission_margin 1.25: the suite runs on shared 2-core machines whose load moves the
    # service time by tens of percent within seconds; the margin keeps expiries rare there.
    cfg = {**gateway_config("digits-cnn", 1, 0.5, 8), "admission_margin": 1.25}
    with GatewayProcess(cfg, Path(tmp_path_factory.mktemp("cnn"))) as gw:
        yield gw


@pytest.fixture(scope="session")
def cnn_oracle() -> Any:
    """Expected digits-cnn outputs of a pool of inputs (ONNX Runtime in the test process)."""
    from tidal.bench.overload import ModelOracle

    return ModelOracle("digits-cnn", pool=4)


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
