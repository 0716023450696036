"""Simulated service times: the profile's l(b,c) with seeded lognormal noise.

``l_ms(b, c) = gamma*b/c + delta*b + epsilon/c + eta`` with c capped at the variant's
``max_useful_cores`` (Amdahl). Noise is multiplicative, lognormal with median 1 and
``sigma = ln(p99_ratio) / z_0.99``, so a batch's p50 is l(b,c) and its p99 is
``p99_ratio x l(b,c)`` as measured. The k-th batch dispatched in a run (any stage, any replica)
uses factor ``eps[variant][k mod NOISE_LEN]``; both simulator modes dispatch batches in the same
order, so they draw the same factors. Service time in integer microseconds:
``max(1, floor(l_ms * 1000 * eps + 0.5))``.
"""

from __future__ import annotations

import math

import numpy as np

from tidal.core.profile import VariantProfile

Z99 = 2.3263478740408408
NOISE_LEN = 1 << 16


class VariantLatency:
    """Latency model of one variant (plain floats, mirrored by the fast kernel)."""

    __slots__ = ("delta", "epsilon", "eta", "gamma", "max_cores", "name", "sigma")

    def __init__(self, profile: VariantProfile) -> None:
        f = profile.fit
        self.name = profile.name
        self.gamma, self.delta, self.epsilon, self.eta = f.gamma, f.delta, f.epsilon, f.eta
        self.max_cores = float(profile.max_useful_cores or math.inf)
        self.sigma = math.log(f.p99_ratio) / Z99

    def l_ms(self, b: int, c: float) -> float:
        """Median latency (ms) of a batch of `b` on `c` cores."""
        c = min(c, self.max_cores)
        return self.gamma * b / c + self.delta * b + self.epsilon / c + self.eta

    def l_s(self, b: int, c: float) -> float:
        """Median latency in seconds (what the batcher and admission plan with)."""
        return self.l_ms(b, c) / 1000.0

    def params(self) -> np.ndarray:
        """[gamma, delta, epsilon, eta, max_cores] for the fast kernel."""
        return np.array([self.gamma, self.delta, self.epsilon, self.eta, self.max_cores])


def service_us(l_ms: float, eps: float) -> int:
    """Service time (integer us) of a batch whose median latency is `l_ms` and noise `eps`."""
    return max(1, math.floor(l_ms * 1000.0 * eps + 0.5))


def noise_table(sigmas: list[float], seed: int, enabled: bool = True) -> np.ndarray:
    """Factors eps[variant, k] (float64), shape (len(sigmas), NOISE_LEN); all 1 if disabled."""
    if not enabled:
        return np.ones((len(sigmas), NOISE_LEN))
    z = np.random.default_rng([seed, 11]).standard_normal(NOISE_LEN)
    return np.exp(np.outer(np.asarray(sigmas, dtype=np.float64), z))


# The CPU quota's period (a worker's cgroup `cpu.max`, `tidal.dataplane.worker_cpu.PERIOD_US`;
# not imported: the simulator does not load the worker's module).
QUOTA_PERIOD_US = 100_000


def quota_rate(lat: VariantLatency, b: int, c: float) -> float:
    """Cores a batch of `b` uses while it runs on a replica of `c` (fractional) cores, whose
    worker has ``ceil(c)`` CPUs and a quota of ``c`` cores per period: on one CPU (c < 1) a
    whole CPU (a batch is compute-bound); on k >= 2 CPUs the rate that makes the quota-bound
    back-to-back time ``l(b, c)`` (what the profiler measures) out of the unthrottled
    ``l(b, k)``: ``c x l(b, c) / l(b, k)``, between c and k."""
    k = math.ceil(c)
    if k <= 1:
        return 1.0
    return min(float(k), max(c, c * lat.l_ms(b, c) / lat.l_ms(b, k)))


def quota_run(
    start_us: int,
    cpu_us: float,
    rate: float,
    quota_us: float,
    period: int,
    used_us: float,
    period_us: int = QUOTA_PERIOD_US,
) -> tuple[int, int, float]:
    """CFS bandwidth control of one worker: a batch needing `cpu_us` CPU-us, run at `rate`
    cores from `start_us`, in periods of `period_us` (aligned at t = 0) each granting
    `quota_us` CPU-us; (`period`, `used_us`): the period the quota was last charged in and
    what it used there (unused quota does not carry over). The batch runs while the
    period's quota lasts, is throttled to the period's end when it runs out, and goes on in
    the next: a batch either fits (a whole CPU's speed) or waits for the next period.
    Returns (end in integer us, >= start + 1; the period and its use after the batch)."""
    t = float(start_us)
    left = float(cpu_us)
    while True:
        n = int(t // period_us)
        if n != period:
            period, used_us = n, 0.0
        p_end = float((n + 1) * period_us)
        avail = quota_us - used_us
        run = min(left / rate, avail / rate, p_end - t)
        if run > 0.0:
            t += run
            left -= run * rate
            used_us += run * rate
        if left <= 1e-6:
            break
        t = p_end  # the quota ran out (throttled to the period's end) or the period ended
    return max(start_us + 1, math.floor(t + 0.5)), period, used_us
