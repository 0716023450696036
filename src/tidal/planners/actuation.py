"""What applying a new plan costs: the per-variant changes between two plans.

`changes(old, new, mode)` lists, per stage and variant, the replicas to start (cold start:
the variant's `load_time_s`), to stop, to resize in place (cores or batch, `resize_s`), or to
recreate (a cores change under `RESIZE_RECREATE`, VPA's Recreate mode: the replica restarts
and pays a cold start). Substrates (simulator, live actuator) apply these; `cold_starts()`
counts the replicas that pay a cold start. Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tidal.core.plan import Plan
from tidal.planners.base import RESIZE_IN_PLACE, RESIZE_RECREATE

START, STOP, RESIZE, RECREATE = "start", "stop", "resize", "recreate"


@dataclass(frozen=True)
class Change:
    """`count` replicas of `variant` in `stage` undergo `kind`; `cores`/`batch` are the new
    values."""

    stage: str
    variant: str
    kind: str
    count: int
    cores: float
    batch: int


def changes(old: Plan | None, new: Plan, mode: str = RESIZE_IN_PLACE) -> list[Change]:
    """The changes turning `old` into `new` (None: everything starts)."""
    if mode not in (RESIZE_IN_PLACE, RESIZE_RECREATE):
        raise ValueError(f"unknown resize mode {mode!r}")
    out: list[Change] = []
    for sp in new.stages:
        old_sp = None
        if old is not None:
            old_sp = next((s for s in old.stages if s.stage == sp.stage), None)
        names = {v.name for v in sp.variants} | (
            {v.name for v in old_sp.variants} if old_sp else set()
        )
        for name in sorted(names):
            n_new, c_new = sp.replicas_of(name), sp.cores_of(name)
            n_old = old_sp.replicas_of(name) if old_sp else 0
            c_old = old_sp.cores_of(name) if old_sp and n_old else c_new
            b_old = old_sp.batch if old_sp else sp.batch
            kept = min(n_old, n_new)
            if n_new > n_old:
                out.append(Change(sp.stage, name, START, n_new - n_old, c_new, sp.batch))
            elif n_old > n_new:
                out.append(Change(sp.stage, name, STOP, n_old - n_new, c_old, b_old))
            if kept and not math.isclose(c_old, c_new):
                kind = RECREATE if mode == RESIZE_RECREATE else RESIZE
                out.append(Change(sp.stage, name, kind, kept, c_new, sp.batch))
            elif kept and b_old != sp.batch:
                out.append(Change(sp.stage, name, RESIZE, kept, c_new, sp.batch))
    return out


def cold_starts(cs: list[Change]) -> int:
    """Replicas that pay a cold start (started or recreated)."""
    return sum(c.count for c in cs if c.kind in (START, RECREATE))
