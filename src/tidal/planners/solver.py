"""The solver layer: build, solve and explain a MILP with `scipy.optimize.milp` (HiGHS).

Every MILP planner (sponge, ipa, infadapter, rim, msp) uses this one way::

    m = Model("ipa", sense="max")
    x = m.var("x[s,m,b]", binary=True, obj=2.0)
    m.constrain({x: 1.0, y: 1.0}, eq=1.0, name="one variant")
    sol = m.solve(node_limit=5000)       # Solution; sol.ok is False when infeasible
    sol.require()                        # or raise Infeasible naming the model
    sol[x]                               # value

Contract: `solve` never raises for an infeasible or limit-stopped model: it returns a Solution
with ``ok=False`` and HiGHS' message. Determinism: the search is bounded by a branch-and-bound
node limit (`node_limit`), not by wall time, so the same model gives the same solution on an
idle or a loaded machine (HiGHS' MIP search is deterministic for fixed options). A wall-clock
`time_limit_s` is only a last-resort guard, off by default; `Solution.hit_limit` says when
either limit stopped the search (the planners put it in the plan's reason).
`Solution.require()` raises `Infeasible` (a TidalError) with the model name and
`Model.explain()` summary. Planners catch it and return a best-effort plan flagged infeasible.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array

from tidal.core.errors import TidalError


class Infeasible(TidalError):
    """No solution satisfies the model's constraints (or none found in the time limit)."""


@dataclass
class _Row:
    coefs: dict[int, float]
    lb: float
    ub: float
    name: str


@dataclass
class _Block:
    cols: np.ndarray
    matrix: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    name: str


@dataclass
class Model:
    """A linear model over named variables; `sense` is "min" or "max"."""

    name: str
    sense: str = "min"
    names: list[str] = field(default_factory=list)
    lb: list[float] = field(default_factory=list)
    ub: list[float] = field(default_factory=list)
    integer: list[bool] = field(default_factory=list)
    obj: list[float] = field(default_factory=list)
    rows: list[_Row] = field(default_factory=list)
    blocks: list[_Block] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.sense not in ("min", "max"):
            raise ValueError(f"sense must be 'min' or 'max', got {self.sense!r}")

    def var(
        self,
        name: str,
        *,
        lb: float = 0.0,
        ub: float = math.inf,
        integer: bool = False,
        binary: bool = False,
        obj: float = 0.0,
    ) -> int:
        """Add a variable; returns its index. `binary` means integer in [0, 1]."""
        if binary:
            lb, ub, integer = 0.0, 1.0, True
        self.names.append(name)
        self.lb.append(lb)
        self.ub.append(ub)
        self.integer.append(integer)
        self.obj.append(obj)
        return len(self.names) - 1

    def constrain(
        self,
        coefs: Mapping[int, float],
        *,
        lb: float = -math.inf,
        ub: float = math.inf,
        eq: float | None = None,
        name: str = "",
    ) -> None:
        """Add ``lb <= sum coefs[i] * x_i <= ub`` (or ``== eq``)."""
        if eq is not None:
            lb = ub = eq
        self.rows.append(_Row(dict(coefs), lb, ub, name or f"c{len(self.rows)}"))

    def constrain_block(
        self,
        cols: list[int],
        matrix: np.ndarray,
        *,
        lb: np.ndarray | float = -math.inf,
        ub: np.ndarray | float = math.inf,
        name: str = "",
    ) -> None:
        """Add many rows at once: ``lb <= matrix @ x[cols] <= ub`` (vectorized builders)."""
        m = np.atleast_2d(np.asarray(matrix, dtype=np.float64))
        k = m.shape[0]
        self.blocks.append(
            _Block(
                np.asarray(cols, dtype=np.int64),
                m,
                np.broadcast_to(np.asarray(lb, dtype=np.float64), (k,)).copy(),
                np.broadcast_to(np.asarray(ub, dtype=np.float64), (k,)).copy(),
                name or f"block{len(self.blocks)}",
            )
        )

    @property
    def n_constraints(self) -> int:
        return len(self.rows) + sum(b.matrix.shape[0] for b in self.blocks)

    def explain(self) -> str:
        """A short human-readable summary: sizes, then the objective and constraints."""
        n_int = sum(self.integer)
        lines = [
            f"model {self.name!r}: {self.sense} over {len(self.names)} variables "
            f"({n_int} integer), {self.n_constraints} constraints",
            "objective: " + _expr({i: c for i, c in enumerate(self.obj) if c}, self.names),
        ]
        for r in self.rows:
            lines.append(f"  {r.name}: {r.lb:g} <= {_expr(r.coefs, self.names)} <= {r.ub:g}")
        for b in self.blocks:
            lines.append(f"  {b.name}: {b.matrix.shape[0]} rows over {len(b.cols)} variables")
        return "\n".join(lines)

    def solve(
        self, node_limit: int = 5000, time_limit_s: float | None = None, rel_gap: float = 1e-6
    ) -> Solution:
        """Solve with HiGHS, at most `node_limit` branch-and-bound nodes (deterministic) and,
        only if given, `time_limit_s` of wall time (load-dependent: avoid). Never raises for
        infeasibility."""
        n = len(self.names)
        if n == 0:
            return Solution(self, True, np.zeros(0), 0.0, "empty model", True)
        c = np.array(self.obj, dtype=np.float64)
        if self.sense == "max":
            c = -c
        cons = []
        if self.rows:
            data, ri, ci = [], [], []
            for k, r in enumerate(self.rows):
                for i, v in r.coefs.items():
                    ri.append(k)
                    ci.append(i)
                    data.append(v)
            a = csr_array((data, (ri, ci)), shape=(len(self.rows), n))
            cons.append(LinearConstraint(a, [r.lb for r in self.rows], [r.ub for r in self.rows]))
        for b in self.blocks:
            full = np.zeros((b.matrix.shape[0], n))
            full[:, b.cols] = b.matrix
            cons.append(LinearConstraint(csr_array(full), b.lb, b.ub))
        options: dict[str, object] = {
            "presolve": True,
            "mip_rel_gap": float(rel_gap),
            "node_limit": int(node_limit),
        }
        if time_limit_s is not None:
            options["time_limit"] = float(time_limit_s)
        res = milp(
            c,
            constraints=cons,
            integrality=np.array(self.integer, dtype=np.int8),
            bounds=Bounds(np.array(self.lb), np.array(self.ub)),
            options=options,
        )
        ok = res.x is not None and res.status in (0, 1)
        optimal = ok and res.status == 0
        hit = res.status in (1, 4)  # 4: HiGHS stopped at a limit with an unrecognized code
        x = np.asarray(res.x) if res.x is not None else np.full(n, np.nan)
        value = float(res.fun) if res.fun is not None else math.nan
        if self.sense == "max":
            value = -value
        return Solution(self, ok, x, value, str(res.message), optimal, hit)


@dataclass
class Solution:
    """The result of `Model.solve`: `ok` (a solution exists), the values `x`, the `objective`,
    HiGHS' message, `optimal` (False when a limit stopped the search: `x` is then HiGHS' best
    incumbent) and `hit_limit` (the node or time limit stopped the search)."""

    model: Model
    ok: bool
    x: np.ndarray
    objective: float
    message: str
    optimal: bool = False
    hit_limit: bool = False

    def __getitem__(self, var: int) -> float:
        return float(self.x[var])

    def on(self, var: int) -> bool:
        """A binary variable's value as a bool."""
        return bool(self.x[var] > 0.5)

    def require(self) -> Solution:
        """Self if solved; else raise Infeasible naming the model and why."""
        if not self.ok:
            raise Infeasible(
                f"model {self.model.name!r} has no solution ({self.message}); "
                + self.model.explain().splitlines()[0]
            )
        return self


def _expr(coefs: Mapping[int, float], names: list[str], limit: int = 8) -> str:
    items = list(coefs.items())
    parts = [f"{v:+g}*{names[i]}" for i, v in items[:limit]]
    if len(items) > limit:
        parts.append(f"... ({len(items) - limit} more terms)")
    return " ".join(parts) if parts else "0"
