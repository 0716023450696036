"""Pattern semantics as tables of (pattern, events, expected matches)."""

from __future__ import annotations

import pytest

from tidal.cep.nfa import NFA, AfterMatchSkip, Pattern
from tidal.core.errors import TidalError


def T(t: str):  # noqa: N802 - a condition on the event type
    return lambda e: e["type"] == t


def evs(seq: str, dt: float = 1.0) -> list[dict]:
    return [{"type": t[0], "id": t, "ts": i * dt} for i, t in enumerate(seq.split())]


def run(p: Pattern, seq: str, dt: float = 1.0) -> list[str]:
    nfa = NFA(p)
    out = []
    for e in evs(seq, dt):
        out += [" ".join(x["id"] for st in m.values() for x in st) for m in nfa.process(e)]
    out += [" ".join(x["id"] for st in m.values() for x in st) for m in nfa.advance_to(1e9)]
    return out


def ab(contig: str) -> Pattern:
    p = Pattern.begin("a").where(T("a"))
    return getattr(p, contig)("b").where(T("b"))


CASES = [
    # contiguity
    ("next", ab("next"), "a1 b1 a2 c1 b2", ["a1 b1"]),
    ("next breaks on a gap", ab("next"), "a1 c1 b1", []),
    ("followed_by skips, consumes first", ab("followed_by"), "a1 c1 b1 b2", ["a1 b1"]),
    ("followed_by_any takes every b", ab("followed_by_any"), "a1 c1 b1 b2", ["a1 b1", "a1 b2"]),
    ("two starts", ab("followed_by"), "a1 a2 b1", ["a1 b1", "a2 b1"]),
    # quantifiers
    (
        "one_or_more emits each extension",
        Pattern.begin("a").where(T("a")).followed_by("b").where(T("b")).one_or_more(),
        "a1 b1 c1 b2",
        ["a1 b1", "a1 b1 b2", "a1 b2"],
    ),
    (
        "times(2)",
        Pattern.begin("a").where(T("a")).times(2).followed_by("c").where(T("c")),
        "a1 a2 a3 c1",
        ["a1 a2 c1", "a2 a3 c1"],
    ),
    (
        "consecutive loop",
        Pattern.begin("a").where(T("a")).times(2).consecutive().followed_by("c").where(T("c")),
        "a1 x1 a2 c1",
        [],
    ),
    (
        "optional present or absent",
        Pattern.begin("a")
        .where(T("a"))
        .followed_by("b")
        .where(T("b"))
        .optional()
        .followed_by("c")
        .where(T("c")),
        "a1 b1 c1 a2 c2",
        ["a1 b1 c1", "a2 c2"],
    ),
    # negation
    (
        "not_followed_by kills",
        Pattern.begin("a")
        .where(T("a"))
        .not_followed_by("x")
        .where(T("x"))
        .followed_by("c")
        .where(T("c")),
        "a1 x1 c1 a2 c2",
        ["a2 c2"],
    ),
    (
        "not_next only the next event",
        Pattern.begin("a").where(T("a")).not_next("x").where(T("x")).followed_by("c").where(T("c")),
        "a1 x1 c1 a2 y1 x2 c2",
        ["a2 c2"],
    ),
    (
        "trailing not_followed_by needs the window to pass",
        Pattern.begin("a").where(T("a")).not_followed_by("b").where(T("b")).within(3),
        "a1 x1 x2 x3 x4 a2 b1",
        ["a1"],
    ),
    # windows
    ("within drops late", ab("followed_by").within(2), "a1 x1 x2 b1 a2 b2", ["a2 b2"]),
    ("within boundary inclusive", ab("followed_by").within(2), "a1 x1 b1", ["a1 b1"]),
]


@pytest.mark.parametrize(("name", "pattern", "seq", "want"), CASES, ids=[c[0] for c in CASES])
def test_semantics(name: str, pattern: Pattern, seq: str, want: list[str]) -> None:
    assert run(pattern, seq) == want


def loop_c(skip: AfterMatchSkip) -> Pattern:
    return Pattern.begin("a", skip).where(T("a")).one_or_more().next("c").where(T("c"))


SKIPS = [
    (AfterMatchSkip.no_skip(), ["a1 a2 a3 c1", "a2 a3 c1", "a3 c1"]),
    (AfterMatchSkip.skip_to_next(), ["a1 a2 a3 c1", "a2 a3 c1", "a3 c1"]),
    (AfterMatchSkip.skip_past_last_event(), ["a1 a2 a3 c1"]),
    (AfterMatchSkip.skip_to_first("a"), ["a1 a2 a3 c1", "a2 a3 c1", "a3 c1"]),
    (AfterMatchSkip.skip_to_last("a"), ["a1 a2 a3 c1", "a3 c1"]),
]


@pytest.mark.parametrize(("skip", "want"), SKIPS, ids=[s[0].kind for s in SKIPS])
def test_after_match_skip(skip: AfterMatchSkip, want: list[str]) -> None:
    assert run(loop_c(skip), "a1 a2 a3 c1") == want


def abc(inner: str) -> Pattern:
    p = Pattern.begin("a").where(T("a")).followed_by("b").where(T("b")).one_or_more()
    if inner:
        p = getattr(p, inner)()
    return p.followed_by("c").where(T("c"))


# The contiguity-within-looping-patterns table of Flink's CEP documentation.
LOOPS = [
    ("", ["a b1 c", "a b1 b2 c", "a b1 b2 b3 c", "a b2 c", "a b2 b3 c", "a b3 c"]),
    ("consecutive", ["a b3 c"]),
    (
        "allow_combinations",
        ["a b1 c", "a b1 b2 c", "a b1 b3 c", "a b1 b2 b3 c", "a b2 c", "a b2 b3 c", "a b3 c"],
    ),
]


@pytest.mark.parametrize(("inner", "want"), LOOPS, ids=["relaxed", "strict", "any"])
def test_contiguity_within_loops_as_flink(inner: str, want: list[str]) -> None:
    assert sorted(run(abc(inner), "a b1 d1 b2 d2 b3 c")) == sorted(want)


def test_keyed_partitions_and_iterative_condition() -> None:
    p = (
        Pattern.begin("s")
        .where(lambda e: e["amount"] < 5)
        .followed_by("l")
        .where(lambda e, ctx: e["amount"] > 10 * ctx.events("s")[0]["amount"])
        .within(600)
    )
    nfa = NFA(p, key="card")
    stream = [
        {"card": 1, "amount": 2, "ts": 0},
        {"card": 2, "amount": 100, "ts": 1},
        {"card": 2, "amount": 1, "ts": 2},
        {"card": 1, "amount": 15, "ts": 3},
        {"card": 2, "amount": 11, "ts": 4},
        {"card": 1, "amount": 30, "ts": 700},
    ]
    got = [(m["s"][0]["card"], m["l"][0]["ts"]) for e in stream for m in nfa.process(e)]
    assert got == [(2, 4)]  # card 1: 15 <= 20, 30 too late (> 600 s)


def test_shared_buffer_prefix_is_shared() -> None:
    p = Pattern.begin("a").where(T("a")).followed_by_any("b").where(T("b"))
    nfa = NFA(p)
    ms = [m for e in evs("a1 b1 b2") for m in nfa.process(e)]
    assert ms[0]["a"][0] is ms[1]["a"][0]


BAD = [
    (lambda: Pattern.begin("a").not_next("b"), "cannot end with not_next"),
    (lambda: Pattern.begin("a").not_followed_by("b"), "needs within"),
    (lambda: Pattern.begin("a").followed_by("a"), "duplicate pattern stage"),
    (lambda: Pattern.begin("a").times(3, 2), "times"),
    (lambda: Pattern.begin("a").within(0), "positive window"),
]


@pytest.mark.parametrize(("make", "msg"), BAD)
def test_bad_patterns(make, msg: str) -> None:
    with pytest.raises(TidalError, match=msg):
        NFA(make())


def test_missing_key_field_is_named() -> None:
    nfa = NFA(Pattern.begin("a"), key="card")
    with pytest.raises(TidalError, match="missing key field 'card'"):
        nfa.process({"ts": 0})
