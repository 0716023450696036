"""The CPU baseline: the innet model served through the gateway over real HTTP."""

from __future__ import annotations

import numpy as np

from tidal.bench.innet_baseline import decode_rows, encode_rows, measure_cpu_path
from tidal.innet.evaluate import load_model


def test_row_encoding_is_exact() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (5, 68)).astype(np.uint8)
    iat = rng.integers(0, 256, 5).astype(np.uint8)
    x2, iat2 = decode_rows(encode_rows(x, iat))
    assert np.array_equal(x, x2) and np.array_equal(iat, iat2)


def test_gateway_serves_the_same_verdicts_as_the_integer_reference() -> None:
    net = load_model().to_int()
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (6, 68)).astype(np.uint8)
    iat = np.array([0, 150, 160, 200, 90, 255], dtype=np.uint8)
    res = measure_cpu_path(net, x, iat)
    assert res["requests"] == 6
    assert res["verdicts"] == net.predict(x, iat).tolist()
