"""The SASE-style language: parsing, errors with line/column, and match semantics."""

from __future__ import annotations

import pytest

from tidal.cep.sase import parse
from tidal.cep.stream import SaseEngine
from tidal.core.errors import TidalError


def ev(typ: str, ts: float, **kw) -> dict:
    return {"type": typ, "ts": ts, **kw}


def rows(q: str, events: list[dict]) -> list[dict]:
    return SaseEngine().compile(q).run(events)


STREAM = [
    ev("A", 0, k=1, v=1),
    ev("B", 1, k=1, v=2),
    ev("C", 2, k=1, v=3),
    ev("A", 3, k=2, v=4),
    ev("C", 4, k=2, v=5),
    ev("C", 5, k=2, v=6),
    ev("C", 20, k=2, v=7),
]

CASES = [
    (
        "seq relaxed",
        "PATTERN SEQ(A a, C c) RETURN a.v AS a, c.v AS c",
        [{"a": 1, "c": 3}, {"a": 4, "c": 5}],
    ),
    (
        "negation between",
        "PATTERN SEQ(A a, !B b, C c) RETURN a.v AS a, c.v AS c",
        [{"a": 4, "c": 5}],
    ),
    (
        "strict contiguity",
        "PATTERN SEQ(A a, C c) STRATEGY strict RETURN a.v AS a, c.v AS c",
        [{"a": 4, "c": 5}],
    ),
    (
        "kleene with window",
        "PATTERN SEQ(A a, C+ c) WHERE [k] WITHIN 10 s "
        "RETURN a.k AS k, count(c) AS n, sum(c.v) AS s",
        [
            {"k": 1, "n": 1, "s": 3},
            {"k": 2, "n": 1, "s": 5},
            {"k": 2, "n": 2, "s": 11},
            {"k": 2, "n": 1, "s": 6},  # a Kleene run may also begin at a later C
        ],
    ),
    (
        "cross-variable predicate",
        "PATTERN SEQ(A a, C c) WHERE [k] AND c.v > a.v + 1 RETURN c.v AS c",
        [{"c": 3}, {"c": 6}],
    ),
    ("window in ms excludes", "PATTERN SEQ(A a, C c) WITHIN 1500 ms RETURN c.v AS c", [{"c": 5}]),
    (
        "skip till any",
        "PATTERN SEQ(A a, C c) WHERE [k] STRATEGY any RETURN c.v AS c",
        [{"c": 3}, {"c": 5}, {"c": 6}, {"c": 7}],
    ),
    (
        "or / not",
        "PATTERN SEQ(ANY x) WHERE x.v = 2 OR NOT (x.v < 7) RETURN x.v AS v",
        [{"v": 2}, {"v": 7}],
    ),
]


@pytest.mark.parametrize(("name", "q", "want"), CASES, ids=[c[0] for c in CASES])
def test_query_semantics(name: str, q: str, want: list[dict]) -> None:
    assert rows(q, STREAM) == want


SYNTAX = [
    ("PATTERN SEQ(A a,, B b)", 1, 17),
    ("PATTERN SEQ(A a, B b)\nWHERE a.x < ", 2, 11),  # input ends after the "<"
    ("PATTERN SEQ(A a) WITHIN 10 parsecs", 1, 28),
    ("PATERN SEQ(A a)", 1, 1),
]


@pytest.mark.parametrize(("q", "line", "col"), SYNTAX)
def test_syntax_errors_give_line_and_column(q: str, line: int, col: int) -> None:
    with pytest.raises(TidalError, match=rf"line {line}, column {col}\b"):
        parse(q)


@pytest.mark.parametrize(
    ("q", "msg"),
    [
        ("PATTERN SEQ(A a) WHERE z.v > 1", "unknown variable 'z'"),
        ("PATTERN SEQ(A a, B a)", "declared twice"),
        ("PATTERN SEQ(!A a, B b)", "cannot begin with negated"),
        ("PATTERN SEQ(A a) RETURN median(a.v)", "unknown function 'median'"),
        ("PATTERN SEQ(A a) SERVERLESS op", "needs a hub"),
    ],
)
def test_semantic_errors(q: str, msg: str) -> None:
    with pytest.raises(TidalError, match=msg):
        SaseEngine().compile(q)


def test_engine_keeps_running_after_events_with_missing_fields() -> None:
    pipe = SaseEngine().compile("PATTERN SEQ(A a, C c) WHERE [k] RETURN c.v AS c")
    out = pipe.run([ev("A", 0, k=1), {"type": "C", "v": 9}, ev("C", 1, k=1, v=3)])
    assert out == [{"c": 3}]
    assert any("missing key field 'k'" in e for e in pipe.errors)


def test_ts_and_type_fields_are_configurable_and_unevaluable_events_counted() -> None:
    q = "PATTERN SEQ(TXN a, TXN b) WHERE [card] AND a.amount < 5 AND b.amount > 500 WITHIN 1 min"
    evs = [
        {"kind": "txn", "card": 1, "amount": 1.0, "time": 0.0},
        {"kind": "txn", "card": 1, "time": 1.0},  # no amount: unevaluable, skipped
        {"kind": "txn", "card": 1, "amount": 900.0},  # no time field
        {"kind": "txn", "amount": 900.0, "time": 2.0},  # no partition attribute
        {"kind": "txn", "card": 1, "amount": 900.0, "time": 3.0},
    ]
    pipe = SaseEngine(ts_field="time", type_field="kind").compile(q)
    rows = pipe.run(evs)
    assert [(r["a"]["time"], r["b"]["time"]) for r in rows] == [(0.0, 3.0)]
    bad = pipe.unevaluable()
    assert bad == {
        "missing attribute 'amount'": 1,
        "missing field 'time'": 1,
        "missing key field 'card'": 1,
    }, bad
