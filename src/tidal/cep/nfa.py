"""A Flink-CEP-style pattern API on an NFA whose partial matches share buffers.

    p = (Pattern.begin("small").where(lambda e: e["amount"] < 5)
         .followed_by("large").where(lambda e: e["amount"] > 500)
         .within(600))
    nfa = NFA(p, key="card")
    for ev in events: matches += nfa.process(ev)

Semantics (event time from field `ts`, events of one key arrive in time order):
- `next`: strict contiguity (the very next event of the key); `followed_by`: relaxed,
  skip till next match (non-matching events are skipped; a matching one is consumed);
  `followed_by_any`: skip till any match (a matching event is taken and also skipped).
- Quantifiers: `times(n[, m])`, `one_or_more()`, `times_or_more(n)`, `optional()`; looping
  stages use relaxed inner contiguity, `consecutive()` makes it strict,
  `allow_combinations()` skip-till-any, with Flink's results: for ``a b+ c`` over
  ``a b1 d1 b2 d2 b3 c`` relaxed gives {a b1 c} {a b1 b2 c} {a b1 b2 b3 c} {a b2 c}
  {a b2 b3 c} {a b3 c}; consecutive gives {a b3 c}; allow_combinations adds {a b1 b3 c}.
  Entering a looping stage does not consume the waiting partial match.
- Negation: `not_next(name)` (the event right after must not match), `not_followed_by(name)`
  (no matching event before the next stage; at the end of a pattern it needs `within`, and
  the match is emitted when the window has passed). An event matching a pending negation
  ends the partial match.
- `within(s)`: last event - first event <= s.
- A match is emitted each time a partial match reaches a final state (so ``a b+`` emits
  {a,b1} then {a,b1,b2}); after-match skip strategies prune partial matches then.
- Conditions are ``f(event)`` or ``f(event, ctx)``; ``ctx.events(name)`` gives the events
  taken so far for stage `name` (iterative conditions).
Partial matches are chains of `_Node`s; branches share their prefix (the shared buffer), so
a fork costs one node, not a copy. `max_runs` bounds partial matches per key (oldest dropped).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from tidal.core.errors import TidalError

Event = dict[str, Any]
Contig = Literal["strict", "relaxed", "any"]
Match = dict[str, list[Event]]


class Ctx:
    """What an iterative condition sees: the partial match so far."""

    def __init__(self, node: _Node | None) -> None:
        self._node = node

    def events(self, name: str) -> list[Event]:
        out = [n.event for n in _walk(self._node) if n.stage == name]
        out.reverse()
        return out


Cond = Callable[[Event, Ctx], bool]


def _wrap(fn: Callable[..., bool]) -> Cond:
    try:
        n = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        n = 1
    if n >= 2:
        return fn
    return lambda e, _ctx: bool(fn(e))


@dataclass
class Stage:
    name: str
    contig: Contig = "relaxed"
    negation: Literal["not_next", "not_followed_by"] | None = None
    conds: list[list[Cond]] = field(default_factory=list)  # OR of ANDs
    min: int = 1
    max: float = 1
    inner: Contig = "relaxed"

    def test(self, e: Event, ctx: Ctx) -> bool:
        if not self.conds:
            return True
        return any(all(c(e, ctx) for c in conj) for conj in self.conds)


class AfterMatchSkip:
    """Flink's after-match skip strategies."""

    def __init__(self, kind: str, name: str | None = None) -> None:
        self.kind, self.name = kind, name

    @staticmethod
    def no_skip() -> AfterMatchSkip:
        return AfterMatchSkip("no_skip")

    @staticmethod
    def skip_to_next() -> AfterMatchSkip:
        return AfterMatchSkip("skip_to_next")

    @staticmethod
    def skip_past_last_event() -> AfterMatchSkip:
        return AfterMatchSkip("skip_past_last_event")

    @staticmethod
    def skip_to_first(name: str) -> AfterMatchSkip:
        return AfterMatchSkip("skip_to_first", name)

    @staticmethod
    def skip_to_last(name: str) -> AfterMatchSkip:
        return AfterMatchSkip("skip_to_last", name)


class Pattern:
    """A pattern sequence under construction (fluent, like Flink's `Pattern`)."""

    def __init__(self, stages: list[Stage], skip: AfterMatchSkip, window: float | None) -> None:
        self.stages, self.skip, self.window = stages, skip, window

    @staticmethod
    def begin(name: str, skip: AfterMatchSkip | None = None) -> Pattern:
        return Pattern([Stage(name)], skip or AfterMatchSkip.no_skip(), None)

    def _add(self, name: str, contig: Contig, negation: Any = None) -> Pattern:
        if any(s.name == name for s in self.stages):
            raise TidalError(f"duplicate pattern stage name {name!r}")
        return Pattern([*self.stages, Stage(name, contig, negation)], self.skip, self.window)

    def next(self, name: str) -> Pattern:
        return self._add(name, "strict")

    def followed_by(self, name: str) -> Pattern:
        return self._add(name, "relaxed")

    def followed_by_any(self, name: str) -> Pattern:
        return self._add(name, "any")

    def not_next(self, name: str) -> Pattern:
        return self._add(name, "strict", "not_next")

    def not_followed_by(self, name: str) -> Pattern:
        return self._add(name, "relaxed", "not_followed_by")

    @property
    def _last(self) -> Stage:
        return self.stages[-1]

    def where(self, fn: Callable[..., bool]) -> Pattern:
        st = self._last
        if not st.conds:
            st.conds.append([])
        for conj in st.conds:
            conj.append(_wrap(fn))
        return self

    def or_where(self, fn: Callable[..., bool]) -> Pattern:
        self._last.conds.append([_wrap(fn)])
        return self

    def times(self, n: int, m: int | None = None) -> Pattern:
        hi = n if m is None else m
        if n < 1 or hi < n:
            raise TidalError(f"times({n}, {m}) needs 1 <= n <= m")
        st = self._last
        st.min, st.max = (0 if st.min == 0 else n), hi
        return self

    def one_or_more(self) -> Pattern:
        st = self._last
        st.min, st.max = (0 if st.min == 0 else 1), float("inf")
        return self

    def times_or_more(self, n: int) -> Pattern:
        st = self._last
        st.min, st.max = (0 if st.min == 0 else n), float("inf")
        return self

    def optional(self) -> Pattern:
        if self._last.negation:
            raise TidalError(f"negated stage {self._last.name!r} cannot be optional")
        self._last.min = 0
        return self

    def consecutive(self) -> Pattern:
        self._last.inner = "strict"
        return self

    def allow_combinations(self) -> Pattern:
        self._last.inner = "any"
        return self

    def within(self, seconds: float) -> Pattern:
        if seconds <= 0:
            raise TidalError(f"within needs a positive window, got {seconds}")
        self.window = float(seconds)
        return self


@dataclass
class _Node:
    event: Event
    pos: int
    stage: str
    prev: _Node | None


def _walk(n: _Node | None) -> Iterator[_Node]:
    while n is not None:
        yield n
        n = n.prev


@dataclass
class _Run:
    i: int  # index of the positive stage last taken (-1: none)
    c: int  # events taken in stage i
    node: _Node | None
    start_pos: int
    start_ts: float
    last_pos: int
    pending_end: bool = False  # final except a trailing not_followed_by
    proceed_only: bool = False  # a relaxed loop continued without it: it may only exit


@dataclass
class _Compiled:
    pos: list[Stage]
    neg_before: list[list[Stage]]
    trailing: list[Stage]


def compile_pattern(p: Pattern) -> _Compiled:
    pos: list[Stage] = []
    neg_before: list[list[Stage]] = []
    pending: list[Stage] = []
    for st in p.stages:
        if st.negation:
            if not pos:
                raise TidalError(f"pattern cannot begin with negated stage {st.name!r}")
            pending.append(st)
        else:
            pos.append(st)
            neg_before.append(pending)
            pending = []
    if any(s.negation == "not_next" for s in pending):
        raise TidalError("a pattern cannot end with not_next")
    if pending and p.window is None:
        raise TidalError("a pattern ending with not_followed_by needs within(...)")
    return _Compiled(pos, neg_before, pending)


class NFA:
    """Runs one pattern over a stream, per key when `key` names an event field."""

    def __init__(
        self, pattern: Pattern, key: str | None = None, ts_field: str = "ts", max_runs: int = 10000
    ) -> None:
        self.p = pattern
        self.c = compile_pattern(pattern)
        self.key, self.ts_field, self.max_runs = key, ts_field, max_runs
        self._runs: dict[Any, list[_Run]] = {}
        self._pos: dict[Any, int] = {}

    def _final(self, j: int, c: int) -> bool:
        st = self.c.pos
        return c >= st[j].min and all(s.min == 0 for s in st[j + 1 :])

    def _match(self, node: _Node | None) -> Match:
        out: Match = {s.name: [] for s in self.c.pos}
        for n in _walk(node):
            out[n.stage].insert(0, n.event)
        return {k: v for k, v in out.items() if v}

    def _ts(self, e: Event) -> float:
        try:
            return float(e[self.ts_field])
        except KeyError:
            raise TidalError(f"event {e!r} is missing field {self.ts_field!r}") from None

    def process(self, e: Event) -> list[Match]:
        """Feed one event; return the matches it completes (in start order)."""
        if self.key is not None and self.key not in e:
            raise TidalError(f"event {e!r} is missing key field {self.key!r}")
        k = e.get(self.key) if self.key is not None else None
        ts = self._ts(e)
        p = self._pos.get(k, 0)
        self._pos[k] = p + 1
        runs = self._runs.get(k, [])
        out: list[tuple[int, int, _Node | None]] = []  # (start_pos, last_pos, node)
        new: list[_Run] = []
        w = self.p.window
        fresh = _Run(-1, 0, None, p, ts, p - 1)
        for r in [*runs, fresh]:
            if w is not None and r.i >= 0 and ts - r.start_ts > w:
                if r.pending_end:
                    out.append((r.start_pos, r.last_pos, r.node))
                continue
            self._step(r, e, p, ts, new, out)
        # after-match skip: prune partial matches and same-step matches in the skip range
        out.sort(key=lambda m: (m[0], m[1]))
        emitted: list[Match] = []
        kept: list[tuple[int, int, _Node | None]] = []
        for s0, s1, node in out:
            if any(self._skip_range(a, b, n, s0) for a, b, n in kept):
                continue
            kept.append((s0, s1, node))
            emitted.append(self._match(node))
            new = [r for r in new if not self._skip_range(s0, s1, node, r.start_pos)]
        if len(new) > self.max_runs:
            new = new[-self.max_runs :]
        self._runs[k] = new
        return emitted

    def _skip_range(self, s0: int, s1: int, node: _Node | None, start: int) -> bool:
        kind = self.p.skip.kind
        if kind == "no_skip":
            return False
        if kind == "skip_to_next":
            return start == s0
        if kind == "skip_past_last_event":
            return s0 <= start <= s1
        name = self.p.skip.name
        ps = [n.pos for n in _walk(node) if n.stage == name]
        if not ps:
            return False
        bound = min(ps) if kind == "skip_to_first" else max(ps)
        return s0 <= start < bound

    def _step(self, r: _Run, e: Event, p: int, ts: float, new: list[_Run], out: list[Any]) -> None:
        P = self.c.pos
        ctx = Ctx(r.node)
        adjacent = p == r.last_pos + 1
        # pending negations between the last taken stage and the next positive one: an
        # event matching one may still be taken, but the partial match cannot skip it
        neg_hit = False
        if r.i >= 0:
            j = r.i + 1
            negs = self.c.trailing if j >= len(P) else self.c.neg_before[j]
            for ng in negs:
                if ng.negation == "not_next" and not adjacent:
                    continue
                if ng.test(e, ctx):
                    neg_hit = True
        takes: list[tuple[int, int, Contig, bool]] = []  # (stage, count, contiguity, loop?)
        loopable = r.i >= 0 and not r.proceed_only and r.c < P[r.i].max
        inner: Contig = P[r.i].inner if r.i >= 0 else "relaxed"
        if loopable and (inner != "strict" or adjacent) and P[r.i].test(e, ctx):
            takes.append((r.i, r.c + 1, inner, True))
        proceed_wait = False  # a non-strict way out exists: the run may skip e
        exits = r.i < 0 or r.c >= P[r.i].min
        if exits:
            j = r.i + 1
            while j < len(P):
                st = P[j]
                contig = st.contig if r.i >= 0 else "relaxed"
                if (contig != "strict" or adjacent or r.i < 0) and st.test(e, ctx):
                    takes.append((j, 1, contig, False))
                if r.i >= 0 and contig != "strict":
                    proceed_wait = True
                if st.min > 0:
                    break
                j += 1
        # a consecutive (strict) loop breaks on any event it does not take
        broken = r.i < 0 or (loopable and inner == "strict")
        stay = not broken and (loopable or proceed_wait)
        if r.pending_end:
            stay = True
        if neg_hit:
            stay = False
            takes = [t for t in takes if t[0] > r.i]  # only a step past the negation
        consumed = False
        proceed_only = False
        for j, c, contig, is_loop in takes:
            node = _Node(e, p, P[j].name, r.node)
            start_ts = ts if r.i < 0 else r.start_ts
            start_pos = p if r.i < 0 else r.start_pos
            if self.p.window is not None and ts - start_ts > self.p.window:
                continue
            nr = _Run(j, c, node, start_pos, start_ts, p)
            if is_loop:
                # relaxed loop: the shorter run keeps only its way out (skips e for the exit)
                proceed_only = proceed_only or contig == "relaxed"
            elif contig == "relaxed" and r.i >= 0 and P[j].max <= 1:
                consumed = True  # skip till next match; entering a loop does not consume
            if self._final(j, c):
                if self.c.trailing:
                    nr.pending_end = True
                else:
                    out.append((start_pos, p, node))
            more = c < P[j].max or j + 1 < len(P)
            if more or nr.pending_end:
                new.append(nr)
        if r.i >= 0 and stay and not consumed:
            if not proceed_only:
                new.append(r)
            elif (exits and r.i + 1 < len(P)) or r.pending_end:
                new.append(replace(r, proceed_only=True))

    def advance_to(self, ts: float) -> list[Match]:
        """Event time reached `ts` (no later event of any key will be older): emit matches
        whose trailing not_followed_by window has passed; drop expired partial matches."""
        w = self.p.window
        emitted: list[Match] = []
        if w is None:
            return emitted
        for k, runs in self._runs.items():
            keep = []
            for r in runs:
                if r.i >= 0 and ts - r.start_ts > w:
                    if r.pending_end:
                        emitted.append(self._match(r.node))
                    continue
                keep.append(r)
            self._runs[k] = keep
        return emitted

    def partial_matches(self) -> int:
        return sum(len(v) for v in self._runs.values())
