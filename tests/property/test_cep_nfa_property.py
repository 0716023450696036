"""The NFA against brute-force enumerations of the same two-event patterns (Hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tidal.cep.nfa import NFA, Pattern

EVENTS = st.lists(
    st.tuples(st.sampled_from("abc"), st.integers(min_value=0, max_value=3)),
    min_size=0,
    max_size=14,
)


def stream(spec: list[tuple[str, int]]) -> list[dict]:
    ts, out = 0, []
    for i, (t, dt) in enumerate(spec):
        ts += dt
        out.append({"type": t, "i": i, "ts": float(ts)})
    return out


def run(p: Pattern, evs: list[dict]) -> list[tuple[int, int]]:
    nfa = NFA(p)
    got = []
    for e in evs:
        for m in nfa.process(e):
            got.append((m["a"][0]["i"], m["b"][0]["i"]))
    return sorted(got)


def is_(t: str):
    return lambda e: e["type"] == t


def pattern(kind: str, neg: bool, w: float) -> Pattern:
    p = Pattern.begin("a").where(is_("a"))
    if neg:
        p = p.not_followed_by("c").where(is_("c"))
    p = getattr(p, kind)("b").where(is_("b"))
    return p.within(w)


@settings(max_examples=150, deadline=None)
@given(
    EVENTS,
    st.sampled_from(["next", "followed_by", "followed_by_any"]),
    st.booleans(),
    st.integers(min_value=1, max_value=6),
)
def test_two_event_patterns_match_brute_force(spec, kind, neg, w) -> None:
    if neg and kind == "next":
        neg = False  # a strict next leaves no room for an event in between
    evs = stream(spec)
    want = []
    for i, a in enumerate(evs):
        if a["type"] != "a":
            continue
        for j in range(i + 1, len(evs)):
            b = evs[j]
            between = evs[i + 1 : j]
            if neg and any(e["type"] == "c" for e in between):
                break
            if kind == "next" and j != i + 1:
                break
            if b["type"] == "b" and b["ts"] - a["ts"] <= w:
                want.append((i, j))
                if kind != "followed_by_any":
                    break
    assert run(pattern(kind, neg, float(w)), evs) == sorted(want)
