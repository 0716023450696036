"""The NFA against brute-force enumerations of the same two-event patterns (Hypothesis)."""

from __future__ import annotations

from hypothesis import example, given, settings
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


def _any_match_brute_force(evs: list[dict], w: int) -> list[tuple]:
    """Skip-till-any-match for ``a b+ c`` by definition: every a, every later c within the
    window, every non-empty subset of the b events between them (Flink's followedByAny with
    allowCombinations())."""
    from itertools import combinations

    want = []
    for i, a in enumerate(evs):
        if a["type"] != "a":
            continue
        for k in range(i + 1, len(evs)):
            c = evs[k]
            if c["type"] != "c" or c["ts"] - a["ts"] > w:
                continue
            bs = [j for j in range(i + 1, k) if evs[j]["type"] == "b"]
            for r in range(1, len(bs) + 1):
                for sub in combinations(bs, r):
                    want.append((i, sub, k))
    return sorted(want)


FLINK_DOC = [("a", 0), ("b", 1), ("d", 1), ("b", 1), ("d", 1), ("b", 1), ("c", 1)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("aabbbcd"), st.integers(min_value=0, max_value=2)),
        max_size=10,
    ),
    st.integers(min_value=1, max_value=8),
)
@example(FLINK_DOC, 8)  # Flink's documentation stream: a b1 d1 b2 d2 b3 c
def test_skip_till_any_match_equals_allow_combinations(spec, w) -> None:
    from tidal.cep.sase import parse

    evs = stream(spec)
    want = _any_match_brute_force(evs, w)
    p = (
        Pattern.begin("a").where(is_("a"))
        .followed_by_any("b").where(is_("b")).one_or_more().allow_combinations()
        .followed_by_any("c").where(is_("c"))
        .within(w)
    )  # fmt: skip
    nfa = NFA(p)
    got = sorted(
        (m["a"][0]["i"], tuple(e["i"] for e in m["b"]), m["c"][0]["i"])
        for e in evs
        for m in nfa.process(e)
    )
    assert got == want
    # the SASE language's STRATEGY any compiles to the same thing
    q = parse(f"PATTERN SEQ(A x, B+ y, C z) WITHIN {w} s STRATEGY any")
    nfa2 = q.nfa()
    rows = [q.row(m) for e in evs for m in nfa2.process(e)]
    got2 = sorted((r["x"]["i"], tuple(e["i"] for e in r["y"]), r["z"]["i"]) for r in rows)
    assert got2 == want
