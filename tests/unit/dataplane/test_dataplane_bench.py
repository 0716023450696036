"""The benchmark's wrk parser and bodies (figures themselves are never asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tidal.bench.dataplane import _bodies, _ms, parse_wrk

WRK = """Running 5s test @ http://127.0.0.1:8099/v2/models/noop/infer
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.37ms    4.72ms  47.45ms   87.38%
  Latency Distribution
     50%  731.00us
     75%    5.02ms
     90%   11.49ms
     99%    1.20s
  21350 requests in 6.02s, 16.91MB read
  Non-2xx or 3xx responses: 12
Requests/sec:   3543.77
"""


def test_parse_wrk() -> None:
    out = parse_wrk(WRK)
    assert out["rps"] == 3543.8 and out["p50_ms"] == 0.731 and out["p99_ms"] == 1200.0
    assert out["non_2xx"] == 12
    with pytest.raises(ValueError):
        _ms("12 parsecs")


def test_bodies_are_valid_oip(tmp_path: Path) -> None:
    b = _bodies(tmp_path)
    noop, h = b["noop"]
    inp = json.loads(noop.read_bytes())["inputs"][0]
    assert inp["shape"] == [1, 64] and len(inp["data"]) == 64 and h["Content-Type"]
    img, h = b["resnet18"]
    n = int(h["Inference-Header-Content-Length"])
    raw = img.read_bytes()
    head = json.loads(raw[:n])["inputs"][0]
    assert head["parameters"]["binary_data_size"] == len(raw) - n == 3 * 224 * 224 * 4
