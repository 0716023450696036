"""The decision log: every planner decision with its inputs, output and time to take effect.

Entries are kept in memory (the last `keep`, for the dashboard) and appended as JSON lines to
an optional file. An entry is written when the decision is made and rewritten (a second line
with the same `seq` and ``"settled": true``) once the actuator reports the plan in force, so
the file is append-only and a reader keeps the last line per `seq`.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tidal.core.plan import Plan, StagePlan, VariantWeight


def plan_summary(plan: Plan | None) -> list[dict[str, Any]] | None:
    """A compact JSON view of a plan: per stage, variants with weights, replicas, cores, batch."""
    if plan is None:
        return None
    return [
        {
            "stage": s.stage,
            "variants": [
                {"name": v.name, "weight": round(v.weight, 4), "replicas": s.replicas_of(v.name)}
                for v in s.variants
            ],
            "replicas": s.total_replicas,
            "cores": s.cores,
            "batch": s.batch,
            "total_cores": round(s.total_cores, 3),
        }
        for s in plan.stages
    ]


def plan_from_summary(
    summary: list[dict[str, Any]], feasible: bool = True, reason: str = ""
) -> Plan:
    """The `Plan` of a decision log's `output`: the inverse of `plan_summary`.
    Per-variant cores are not in the summary: every variant runs the stage's cores."""
    stages = []
    for s in summary:
        vs = s["variants"]
        multi = len(vs) > 1
        stages.append(
            StagePlan(
                stage=s["stage"],
                variants=tuple(
                    VariantWeight(
                        name=v["name"],
                        weight=float(v["weight"]) if multi else 1.0,
                        replicas=int(v["replicas"]) if multi else None,
                    )
                    for v in vs
                ),
                replicas=int(s["replicas"]),
                cores=float(s["cores"]),
                batch=int(s["batch"]),
            )
        )
    return Plan(stages=tuple(stages), feasible=feasible, reason=reason)


@dataclass
class Decision:
    """One control decision. `action` is applied | unchanged | kept-last-feasible | refused."""

    seq: int
    t: float
    policy: str
    inputs: dict[str, Any]
    output: list[dict[str, Any]] | None
    feasible: bool
    reason: str
    action: str
    decision_ms: float
    time_to_effect_s: float | None = None
    settled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class DecisionLog:
    """Bounded in-memory log plus an optional append-only JSON-lines file."""

    def __init__(self, path: str | Path | None = None, keep: int = 200) -> None:
        self.path = Path(path) if path else None
        self.entries: deque[Decision] = deque(maxlen=keep)
        self._seq = 0
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def add(self, d: Decision) -> None:
        self.entries.append(d)
        self._write(d)

    def settle(self, d: Decision, time_to_effect_s: float) -> None:
        d.time_to_effect_s = time_to_effect_s
        d.settled = True
        self._write(d)

    def recent(self, n: int = 20) -> list[dict[str, Any]]:
        return [asdict(d) for d in list(self.entries)[-n:]]

    def _write(self, d: Decision) -> None:
        if self.path is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(asdict(d), default=str) + "\n")


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The decisions of a log file, last line per `seq` winning, in `seq` order."""
    last: dict[int, dict[str, Any]] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            last[int(d["seq"])] = d
    return [last[k] for k in sorted(last)]
