"""The scoreboard's Pareto verdict and done-when checks (`tidal.bench.decisions`), on rows made
up here, and its load levels and windows (days 18-21 only in the hold-out group)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tidal.bench import decisions as d


def row(policy: str, viol: float, cost: float, changes: float = 12.0) -> dict[str, Any]:
    return {"window": "w", "group": "holdout", "level": "0.7", "policy": policy,
            "violations_pct": viol, "core_s": cost, "acc_sent": 0.0, "changes_per_h": changes,
            "peak_rps": 1.0, "infeasible": 0}  # fmt: skip


def test_dominance_needs_no_worse_in_all_and_better_in_one() -> None:
    assert d.dominates(row("a", 0.0, 10.0), row("b", 0.0, 12.0))
    assert not d.dominates(row("a", 0.0, 12.0), row("b", 0.0, 12.0))  # a tie is not dominance
    assert not d.dominates(row("a", 0.5, 10.0), row("b", 0.0, 12.0))  # a trade-off


def test_verdict_reports_who_dominates_and_the_done_when_checks() -> None:
    rows = [row("tidal", 0.3, 11.0, 80.0), row("ipa", 0.1, 10.0), row("hpa", 5.0, 20.0)]
    v = d.verdict(rows)
    assert v["dominated"]["tidal"] == {"cases": 1, "dominated": 1, "ipa": 1}
    why = v["checks"]["holdout"]["failures"][0]["why"]
    assert why == [
        "dominated",
        "violations > best peer + 0.1 pp",
        "cost > cheapest policy at its violation level",
        "changes/hour > 60",
    ]
    ok = [row("tidal", 0.1, 9.0), row("ipa", 0.1, 10.0)]
    assert d.verdict(ok)["checks"]["holdout"]["failures"] == []


def test_windows_keep_days_18_to_21_for_checking_only() -> None:
    ws = d.windows()
    assert sum(w.group == "tune" for w in ws) >= 10
    for w in ws:
        day = w.start // d.DAY
        if w.group == "tune":
            assert 14 <= day <= 17
        if w.group == "holdout":
            assert 18 <= day <= 21


def test_damping_scales_the_peak_10s_mean_to_the_level() -> None:
    raw = np.array([10.0] * 20 + [100.0] * 10 + [10.0] * 20)
    out = d.damped(raw, "0.5", 400.0)
    k = np.convolve(out, np.ones(10) / 10, mode="valid").max()
    assert abs(k - 200.0) <= 1.0
    assert d.damped(raw, "raw", 400.0).tolist() == raw.tolist()
