"""A SASE-style query language, parsed with lark and compiled onto the `nfa` engine.

    FROM txns
    SERVERLESS fraud_flag                       -- an operator as a service, before matching
    PATTERN SEQ(TXN a, !TXN b, TXN+ c)          -- !: negation, +: Kleene plus
    WHERE [card] AND a.amount < 5 AND c.amount > 500 AND b.amount > 100
    WITHIN 10 min                               -- ms | s | min | h
    STRATEGY next                               -- strict | next (default) | any
    RETURN a.card AS card, count(c) AS n, sum(c.amount)
    SERVERLESS forward                          -- and/or after RETURN, on the result rows

The event type ``TXN`` matches events whose ``type`` field equals it (case-insensitive;
the field name is `type_field`, default ``type``); ``ANY`` matches every event. Event time
is the number in field `ts_field` (default ``ts``), non-decreasing per key; an event without
it cannot be evaluated. ``STRATEGY any`` is skip-till-any-match: every combination, as
Flink's ``followedByAny`` with ``allowCombinations()`` on Kleene components. A WHERE that
reads an attribute the event lacks is false, and the event is counted in
`Query.unevaluable` (``missing attribute 'x'``), as events without `ts` or the partition
attribute are counted by the pipeline (`Pipeline.unevaluable`). ``[attr]`` partitions the
stream by `attr` (keyed NFA). Each WHERE conjunct is attached to the last variable it
names, so ``a.amount < c.amount`` is checked when `c` is taken (with `a` from the partial
match). A syntax error raises a TidalError giving the line and column. Expressions are
compiled to closures; nothing is evaluated with `eval`.
"""

from __future__ import annotations

import operator as _op
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lark

from tidal.cep.nfa import NFA, AfterMatchSkip, Ctx, Match, Pattern
from tidal.core.errors import TidalError

_GRAMMAR = (Path(__file__).parent / "sase.lark").read_text()
_PARSER = lark.Lark(_GRAMMAR, parser="lalr", propagate_positions=True)
_UNITS = {
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "seconds": 1.0,
    "min": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hours": 3600.0,
}
_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "<": _op.lt,
    "<=": _op.le,
    ">": _op.gt,
    ">=": _op.ge,
    "=": _op.eq,
    "!=": _op.ne,
    "<>": _op.ne,
}
_ARITH: dict[str, Callable[[Any, Any], Any]] = {
    "+": _op.add,
    "-": _op.sub,
    "*": _op.mul,
    "/": _op.truediv,
}

Env = dict[str, Any]
Fn = Callable[[Env], Any]


@dataclass
class Component:
    type: str
    var: str
    negated: bool
    kleene: bool


@dataclass
class Query:
    """A parsed and compiled query."""

    text: str
    source: str | None
    pre_ops: list[str]
    post_ops: list[str]
    components: list[Component]
    key: str | None
    window: float | None
    strategy: str
    returns: list[tuple[str, Fn]]
    pattern: Pattern
    conds: dict[str, list[Fn]] = field(default_factory=dict)
    ts_field: str = "ts"
    type_field: str = "type"
    unevaluable: Counter[str] = field(default_factory=Counter)

    def nfa(self) -> NFA:
        return NFA(self.pattern, key=self.key, ts_field=self.ts_field)

    def row(self, m: Match) -> dict[str, Any]:
        """The RETURN row of a match (all variables' events when there is no RETURN)."""
        env: Env = {}
        for c in self.components:
            if c.negated:
                continue
            evs = m.get(c.var, [])
            env[c.var] = evs if c.kleene else (evs[0] if evs else None)
        if not self.returns:
            return env
        return {name: fn(env) for name, fn in self.returns}


def parse(text: str, ts_field: str = "ts", type_field: str = "type") -> Query:
    """Parse and compile `text`; TidalError with line and column on a syntax error."""
    try:
        tree = _PARSER.parse(text)
    except lark.exceptions.UnexpectedInput as e:
        line, col = getattr(e, "line", "?"), getattr(e, "column", "?")
        near = text.splitlines()[line - 1].strip() if isinstance(line, int) and line > 0 else ""
        expected = sorted(getattr(e, "expected", None) or getattr(e, "allowed", None) or [])
        hint = f"; expected one of {expected[:8]}" if expected else ""
        raise TidalError(
            f"query syntax error at line {line}, column {col}: near {near[:60]!r}{hint}"
        ) from None
    return _Compiler(text, ts_field, type_field).query(tree)


class _Compiler:
    def __init__(self, text: str, ts_field: str = "ts", type_field: str = "type") -> None:
        self.text = text
        self.vars: dict[str, Component] = {}
        self.key: str | None = None
        self.ts_field, self.type_field = ts_field, type_field
        self.unevaluable: Counter[str] = Counter()
        self._last_missing: tuple[int, str] | None = None

    def query(self, t: lark.Tree) -> Query:
        source = None
        pre: list[str] = []
        post: list[str] = []
        comps: list[Component] = []
        where: lark.Tree | None = None
        window: float | None = None
        strategy = "next"
        returns: list[tuple[str, Fn]] = []
        for ch in t.children:
            if not isinstance(ch, lark.Tree):
                continue
            d = ch.data
            if d == "from_clause":
                source = str(ch.children[0])
            elif d == "pre_ops":
                pre = [str(s.children[0]) for s in ch.children]
            elif d == "post_ops":
                post = [str(s.children[0]) for s in ch.children]
            elif d == "pattern":
                comps = [self.component(c) for c in ch.children]
            elif d == "where_clause":
                where = ch.children[0]
            elif d == "within_clause":
                window = float(str(ch.children[0])) * _UNITS[str(ch.children[1]).lower()]
            elif d == "strategy_clause":
                strategy = str(ch.children[0]).lower()
            elif d == "return_clause":
                for item in ch.children:
                    fn, _ = self.expr(item.children[0])
                    name = (
                        str(item.children[1])
                        if len(item.children) > 1
                        else self._span(item.children[0])
                    )
                    returns.append((name, fn))
        if not any(not c.negated for c in comps):
            raise TidalError("PATTERN SEQ(...) needs at least one non-negated component")
        if comps[0].negated:
            raise TidalError(f"PATTERN cannot begin with negated component !{comps[0].type}")
        conds: dict[str, list[Fn]] = {c.var: [] for c in comps}
        if where is not None:
            for conj in self._conjuncts(where):
                fn, vs = self.expr(conj)
                if not vs:
                    continue  # [attr] equivalences (already turned into the key)
                last = max(vs, key=lambda v: [c.var for c in comps].index(v))
                conds[last].append(fn)
        pattern = self.build(comps, conds, window, strategy)
        return Query(
            self.text,
            source,
            pre,
            post,
            comps,
            self.key,
            window,
            strategy,
            returns,
            pattern,
            conds,
            self.ts_field,
            self.type_field,
            self.unevaluable,
        )

    def _span(self, node: Any) -> str:
        meta = getattr(node, "meta", None)
        if meta is not None and not getattr(meta, "empty", True):
            return self.text[meta.start_pos : meta.end_pos]
        return str(node)

    def component(self, c: lark.Tree) -> Component:
        toks = [str(x) for x in c.children]
        neg = toks[0] == "!"
        if neg:
            toks = toks[1:]
        kleene = "+" in toks
        toks = [x for x in toks if x != "+"]
        typ, var = toks[0], toks[1]
        if var in self.vars:
            raise TidalError(f"variable {var!r} is declared twice in SEQ")
        comp = Component(typ, var, neg, kleene)
        self.vars[var] = comp
        return comp

    def _conjuncts(self, t: Any) -> list[Any]:
        if (
            isinstance(t, lark.Tree)
            and t.data in ("and_", "or_", "compare", "arith")
            and len(t.children) == 1
        ):
            return self._conjuncts(t.children[0])
        if isinstance(t, lark.Tree) and t.data == "and_":
            out: list[Any] = []
            for ch in t.children:
                out += self._conjuncts(ch)
            return out
        return [t]

    def expr(self, t: Any) -> tuple[Fn, set[str]]:
        """Compile an expression tree to (env -> value, variables it names)."""
        d = t.data
        ch = t.children
        if d in ("or_", "and_", "compare", "arith") and len(ch) == 1:
            return self.expr(ch[0])
        if d == "or_":
            parts = [self.expr(c) for c in ch]
            return (lambda env: any(f(env) for f, _ in parts)), set().union(*(v for _, v in parts))
        if d == "and_":
            parts = [self.expr(c) for c in ch]
            return (lambda env: all(f(env) for f, _ in parts)), set().union(*(v for _, v in parts))
        if d == "not_":
            f, vs = self.expr(ch[0])
            return (lambda env: not f(env)), vs
        if d == "compare":
            (fa, va), (fb, vb) = self.expr(ch[0]), self.expr(ch[2])
            cmp = _CMP[str(ch[1])]
            return (lambda env: _safe(cmp, fa(env), fb(env))), va | vb
        if d == "arith":
            f0, vs = self.expr(ch[0])
            steps = []
            for i in range(1, len(ch), 2):
                fi, vi = self.expr(ch[i + 1])
                steps.append((_ARITH[str(ch[i])], fi))
                vs = vs | vi

            def arith(env: Env) -> Any:
                v = f0(env)
                for opf, fi in steps:
                    v = opf(v, fi(env))
                return v

            return arith, vs
        if d == "neg":
            f, vs = self.expr(ch[1])
            return (lambda env: -f(env)), vs
        if d == "number":
            x = float(ch[0])
            v = int(x) if x.is_integer() and "." not in str(ch[0]) else x
            return (lambda env: v), set()
        if d == "string":
            s = str(ch[0])[1:-1]
            return (lambda env: s), set()
        if d == "attr":
            var, name = str(ch[0]), str(ch[1])
            self._check_var(var, t)
            return (lambda env: self._attr(env.get(var), name)), {var}
        if d == "var":
            var = str(ch[0])
            self._check_var(var, t)
            return (lambda env: env.get(var)), {var}
        if d == "equiv":
            attr = str(ch[0])
            if self.key not in (None, attr):
                raise TidalError(f"two partition attributes [{self.key}] and [{attr}]")
            self.key = attr
            return (lambda env: True), set()
        if d == "func":
            name = str(ch[0]).lower()
            f, vs = self.expr(ch[1])
            if name not in _FUNCS:
                raise TidalError(
                    f"unknown function {name!r} at line {t.meta.line}, column "
                    f"{t.meta.column}; known: {sorted(_FUNCS)}"
                )
            agg = _FUNCS[name]
            return (lambda env: agg(f(env))), vs
        raise TidalError(f"unsupported expression {d!r}")

    def _check_var(self, var: str, t: lark.Tree) -> None:
        if var not in self.vars:
            raise TidalError(
                f"unknown variable {var!r} at line {t.meta.line}, column "
                f"{t.meta.column}; SEQ declares {sorted(self.vars)}"
            )

    def build(
        self,
        comps: list[Component],
        conds: dict[str, list[Fn]],
        window: float | None,
        strategy: str,
    ) -> Pattern:
        p: Pattern | None = None
        for c in comps:
            if p is None:
                p = Pattern.begin(c.var, AfterMatchSkip.no_skip())
            elif c.negated:
                p = p.not_next(c.var) if strategy == "strict" else p.not_followed_by(c.var)
            elif strategy == "strict":
                p = p.next(c.var)
            elif strategy == "any":
                p = p.followed_by_any(c.var)
            else:
                p = p.followed_by(c.var)
            p = p.where(self._cond(c, conds[c.var]))
            if c.kleene:
                p = p.one_or_more()
                if strategy == "strict":
                    p = p.consecutive()
                elif strategy == "any":  # skip-till-any-match: every combination (Flink)
                    p = p.allow_combinations()
        assert p is not None
        if window is not None:
            p = p.within(window)
        return p

    def _cond(self, c: Component, fns: list[Fn]) -> Callable[[dict[str, Any], Ctx], bool]:
        typ = c.type.lower()
        others = [v for v in self.vars.values() if v.var != c.var and not v.negated]

        tf = self.type_field

        def cond(e: dict[str, Any], ctx: Ctx) -> bool:
            if typ != "any" and str(e.get(tf, "")).lower() != typ:
                return False
            if not fns:
                return True
            env: Env = {c.var: e}
            for o in others:
                evs = ctx.events(o.var)
                if evs:
                    env[o.var] = evs[-1]
            return all(f(env) for f in fns)

        return cond

    def _attr(self, ev: Any, name: str) -> Any:
        """`ev.name`; a missing attribute reads None (the comparison is false) and the event
        is counted once in `unevaluable`."""
        if isinstance(ev, dict) and name not in ev:
            key = (id(ev), name)
            if key != self._last_missing:
                self._last_missing = key
                self.unevaluable[f"missing attribute {name!r}"] += 1
            return None
        return _get(ev, name)


def _get(ev: Any, name: str) -> Any:
    if ev is None:
        return None
    if isinstance(ev, list):
        return [x.get(name) for x in ev]
    return ev.get(name)


def _safe(cmp: Callable[[Any, Any], bool], a: Any, b: Any) -> bool:
    if a is None or b is None:
        return False
    try:
        return cmp(a, b)
    except TypeError:
        return False


def _as_list(x: Any) -> list[Any]:
    if x is None:
        return []
    return x if isinstance(x, list) else [x]


_FUNCS: dict[str, Callable[[Any], Any]] = {
    "count": lambda x: len(_as_list(x)),
    "sum": lambda x: sum(_as_list(x)),
    "avg": lambda x: (sum(_as_list(x)) / len(_as_list(x))) if _as_list(x) else None,
    "min": lambda x: min(_as_list(x)) if _as_list(x) else None,
    "max": lambda x: max(_as_list(x)) if _as_list(x) else None,
    "first": lambda x: _as_list(x)[0] if _as_list(x) else None,
    "last": lambda x: _as_list(x)[-1] if _as_list(x) else None,
}
