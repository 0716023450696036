"""The CPU quota of a fractional-core replica (`SimConfig.cpu_quota`): a batch runs at a whole
CPU's speed while the period's quota lasts and is throttled to the period's end otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from tidal.core.errors import TidalError
from tidal.core.pipeline import PipelineSpec, StageSpec
from tidal.core.profile import LatencyFit, ProfileSet, VariantProfile
from tidal.sim.config import SimConfig
from tidal.sim.engine import simulate
from tidal.sim.latency import QUOTA_PERIOD_US, VariantLatency, quota_rate, quota_run

FIT = LatencyFit(gamma=20.0, delta=1.0, epsilon=5.0, eta=1.0, p99_ratio=1.3)
PROFILES = ProfileSet(
    variants={"a": VariantProfile(name="a", accuracy=0.6, load_time_s=1.0, resize_s=0.5, fit=FIT)}
)
ONE = PipelineSpec(name="one", stages=[StageSpec(name="s", task="t", variants=["a"])])


def test_a_lone_batch_fits_and_back_to_back_batches_are_throttled() -> None:
    # 42 ms of CPU at a whole CPU against 50 ms per 100-ms period (0.5 cores).
    assert quota_run(0, 42_000, 1.0, 50_000, -1, 0.0) == (42_000, 0, 42_000.0)
    # Started with 8 ms of quota left: 8 ms, throttled to 100 ms, 34 ms in the next period.
    assert quota_run(42_000, 42_000, 1.0, 50_000, 0, 42_000.0) == (134_000, 1, 34_000.0)
    # A new period's quota is whole again (unused quota does not carry over).
    assert quota_run(250_000, 42_000, 1.0, 50_000, 1, 34_000.0) == (292_000, 2, 42_000.0)
    # Back to back, the long-run rate is the quota's: 0.5 cores.
    t, p, u = 0, -1, 0.0
    for _ in range(200):
        t, p, u = quota_run(t, 42_000, 1.0, 50_000, p, u)
    assert t / (200 * 42_000) == pytest.approx(2.0, rel=0.02)


def test_the_rate_while_running_is_a_whole_cpu_below_one_core() -> None:
    lat = VariantLatency(PROFILES.variants["a"])
    assert quota_rate(lat, 1, 0.5) == 1.0
    # On 2 CPUs with a 1.5-core quota: between 1.5 and 2, from l(b, 1.5) over l(b, 2).
    r = quota_rate(lat, 4, 1.5)
    assert 1.5 <= r <= 2.0
    assert r == pytest.approx(min(2.0, 1.5 * lat.l_ms(4, 1.5) / lat.l_ms(4, 2)))


def _run(cores: float, quota: bool, rate: float) -> dict[str, float]:
    rates = np.full(60, rate)
    cfg = SimConfig(slo_ms=2000, mode="reference", noise=False, cpu_quota=quota, seed=3)
    kw = {"replicas": 1, "cores": cores, "batch": 1}
    return simulate(ONE, PROFILES, rates, "static", cfg, policy_kwargs=kw).summary()


def test_light_load_on_half_a_core_runs_at_a_whole_cpus_speed() -> None:
    lat = VariantLatency(PROFILES.variants["a"])
    # 1 req/s: every batch finds its quota (27 ms of CPU < 50 ms): l(1, 1), not l(1, 0.5).
    with_quota = _run(0.5, True, 1.0)
    without = _run(0.5, False, 1.0)
    assert with_quota["p50_ms"] == pytest.approx(lat.l_ms(1, 1.0), abs=0.5)
    assert without["p50_ms"] == pytest.approx(lat.l_ms(1, 0.5), abs=0.5)
    # Near saturation (16 req/s against the quota's 1 / (2 x 27 ms) = 18.5/s) batches wait
    # for the next period: the median is well above the lone batch's time.
    busy = _run(0.5, True, 16.0)
    assert busy["p50_ms"] > 1.5 * lat.l_ms(1, 1.0)


def test_whole_cores_are_never_throttled_and_fast_mode_refuses_the_quota() -> None:
    a, b = _run(1.0, True, 20.0), _run(1.0, False, 20.0)
    a.pop("decision_ms_mean"), b.pop("decision_ms_mean")
    assert a == b
    assert QUOTA_PERIOD_US == 100_000
    with pytest.raises(TidalError, match="cpu_quota"):
        simulate(ONE, PROFILES, np.full(10, 1.0), "static", SimConfig(mode="fast", cpu_quota=True))
