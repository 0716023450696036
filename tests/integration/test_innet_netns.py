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

from tidal.innet import dataset
from tidal.innet.evaluate import load_model
from tidal.innet.fabric import Fabric
from tidal.innet.mapper import map_network
from tidal.innet.netns import NamespaceFabric, unavailable

pytestmark = pytest.mark.netns


def _packets() -> tuple[np.ndarray, np.ndarray]:
    """12 covert and 12 benign test-split packets from the shared captures (random bytes and
    gaps when the captures are missing)."""
    cov, ben = dataset.default_dirs()
    if cov and ben:
        ps = dataset.load(cov[:1], ben)
        te = ps.subset_flows(dataset.split(ps)["test"])
        rows = np.r_[np.flatnonzero(te.y == 1)[:12], np.flatnonzero(te.y == 0)[:12]]
        return te.x[rows], te.iat[rows]
    rng = np.random.default_rng(11)
    return (
        rng.integers(0, 256, size=(24, 68)).astype(np.uint8),
        rng.integers(0, 256, size=24).astype(np.uint8),
    )


@pytest.fixture(scope="module")
def reason() -> None:
    why = unavailable()
    if why:
        pytest.skip(f"network namespaces unavailable: {why}")


def test_real_frames_through_switch_namespaces_match_in_process(reason: None) -> None:
    net = load_model().to_int()
    mapping = map_network(net)
    assert len(mapping.programs) >= 3
    x, iat = _packets()
    expected = Fabric(mapping).run_frames(x, iat)
    assert set(expected.tolist()) == {0, 1}  # both verdicts occur
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
