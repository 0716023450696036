"""Stage-level routing: which variant lane of a stage takes the next request.

One implementation for the live stage (`tidal.dataplane.stage`) and the simulator
(`tidal.sim.reference`): smooth weighted round robin (nginx's SWRR) on the plan's weights
(InfAdapter's quotas) over the lanes that can take a request now (`GroupScheduler.routable`).

Contract of `pick(routable)`: among lanes with weight > 0 for which `routable(name)` is true,
every one gains its weight in credit, the one with the most credit wins (the first in weight
order on ties) and pays the total; None when no lane qualifies (the stage refuses: no ready
replica). Over any window the split converges to the weights, with at most one request of
deviation per lane.
"""

from __future__ import annotations

from collections.abc import Callable


class Router:
    """Smooth weighted round robin over a stage's lanes (see the module docstring)."""

    __slots__ = ("weights", "_credit", "_single")

    def __init__(self) -> None:
        self.weights: dict[str, float] = {}
        self._credit: dict[str, float] = {}
        self._single: str | None = None

    def set_weights(self, weights: dict[str, float]) -> None:
        """New weights (order = tie order); lanes kept keep their credit."""
        self.weights = {n: float(w) for n, w in weights.items() if w > 0}
        self._credit = {n: self._credit.get(n, 0.0) for n in self.weights}
        self._single = next(iter(self.weights)) if len(self.weights) == 1 else None

    def pick(self, routable: Callable[[str], bool]) -> str | None:
        one = self._single
        if one is not None:  # the common case: one weighted lane, no credit to keep
            return one if routable(one) else None
        best: str | None = None
        best_credit = -1e300
        total = 0.0
        credit = self._credit
        for name, w in self.weights.items():
            if not routable(name):
                continue
            total += w
            c = credit[name] + w
            credit[name] = c
            if c > best_credit:
                best, best_credit = name, c
        if best is not None:
            credit[best] -= total
        return best
