"""Shared fixtures: the committed model, its mapping, and a small real sample when present."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import scapy.all  # noqa: F401  (scapy may warn on import; keep the tests' filter strict)

from tidal.innet.evaluate import load_model
from tidal.innet.intref import IntNet
from tidal.innet.mapper import map_network
from tidal.innet.program import Mapping
from tidal.innet.qmodel import NetNN


@pytest.fixture(scope="session")
def model() -> NetNN:
    return load_model()


@pytest.fixture(scope="session")
def net(model: NetNN) -> IntNet:
    return model.to_int()


@pytest.fixture(scope="session")
def mapping(net: IntNet) -> Mapping:
    return map_network(net)


@pytest.fixture(scope="session")
def samples() -> tuple[np.ndarray, np.ndarray]:
    """200 random inputs covering the byte and IAT ranges (deterministic)."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, size=(200, 68)).astype(np.uint8)
    x[:50, 20:] = 0  # short packets: zero padding
    iat = rng.integers(0, 256, size=200).astype(np.uint8)
    return x, iat
