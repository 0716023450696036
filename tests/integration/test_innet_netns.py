"""Real frames through switch processes in Linux network namespaces (marked netns)."""

from __future__ import annotations

import subprocess
import time
import warnings

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import scapy.all  # noqa: F401

from tidal.innet.evaluate import load_model
from tidal.innet.fabric import Fabric
from tidal.innet.mapper import map_network
from tidal.innet.netns import NamespaceFabric, unavailable

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def reason() -> None:
    why = unavailable()
    if why:
        pytest.skip(f"network namespaces unavailable: {why}")


def test_real_frames_through_switch_namespaces_match_in_process(reason: None) -> None:
    net = load_model().to_int()
    mapping = map_network(net)
    assert len(mapping.programs) >= 3
    rng = np.random.default_rng(11)
    x = rng.integers(0, 256, size=(24, 68)).astype(np.uint8)
    x[:12, 40:] = 0
    iat = rng.integers(0, 256, size=24).astype(np.uint8)
    # A mix of covert-looking and benign-looking inputs: take the reference's verdicts.
    expected = Fabric(mapping).run_frames(x, iat)
    assert np.array_equal(expected, net.predict(x, iat))
    with NamespaceFabric(mapping, timeout=10.0) as nf:
        names = list(nf.namespaces)
        got = nf.classify(x, iat)
        nf.send_raw(mapping.entry[0][0], b"\xff" * 6 + b"\x02" * 6 + b"\x88\xb5" + b"\x09" * 20)
        time.sleep(0.5)
    assert np.array_equal(got, expected)
    entry = mapping.entry[0][0]
    assert nf.stats[entry]["malformed"] >= 1  # the bad-version frame was dropped and counted
    assert all(nf.stats[p.switch_id]["emitted_samples"] == len(x) for p in mapping.programs)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed for n in names)  # namespaces removed
