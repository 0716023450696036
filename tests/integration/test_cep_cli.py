"""`tidal cep` commands end to end: a query runs; a syntax error is one line, exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TIDAL = str(Path(sys.executable).parent / "tidal")


def test_query_prints_matches() -> None:
    q = (
        "PATTERN SEQ(TXN a, TXN b) WHERE [card] AND a.amount < 5 AND b.amount > 500 "
        "WITHIN 10 min RETURN a.card AS card, a.seq AS s, b.seq AS l"
    )
    r = subprocess.run(
        [TIDAL, "cep", "query", q, "--events", "3000", "--limit", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == 3 and all(row["s"] < row["l"] for row in rows)
    assert "matches" in r.stderr


def test_query_syntax_error_is_one_line_with_position() -> None:
    r = subprocess.run(
        [TIDAL, "cep", "query", "PATTERN SEQ(TXN a,, TXN b)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "line 1, column 19" in r.stderr and "Traceback" not in r.stderr
