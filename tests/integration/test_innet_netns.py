"""Real frames through the switch chain in Linux network namespaces (marked netns): the entry
switch parses captured Ethernet frames, the model switches and the exit switch run in their
own processes, and everything equals the vectorised path bit for bit."""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from scapy.all import wrpcap
    from scapy.layers.l2 import Ether

from tidal.innet.evaluate import frames
from tidal.innet.netns import unavailable
from tidal.innet.synthetic import synthetic_benign, synthetic_covert

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def reason() -> None:
    why = unavailable()
    if why:
        pytest.skip(f"network namespaces unavailable: {why}")


def _write(d: Path, flows: object, n: int) -> None:
    d.mkdir()
    for name, fr, ts in flows:  # type: ignore[attr-defined]
        pkts = []
        for f, t in zip(fr[:n], ts[:n], strict=True):
            p = Ether(f)
            p.time = t / 1e6
            pkts.append(p)
        wrpcap(str(d / (name.rsplit("/", 1)[-1] + ".pcap")), pkts)


def test_frames_replay_in_namespaces_agrees_with_the_vectorised_path(
    reason: None, tmp_path: Path
) -> None:
    """What `tidal innet evaluate --frames N` runs, on two small captures."""
    _write(tmp_path / "c", synthetic_covert(1, seed=3), 24)
    _write(tmp_path / "b", synthetic_benign(1, seed=3), 16)
    res = frames(12, [tmp_path / "c"], [tmp_path / "b"], netns=True)
    assert res["transport"] == "network namespaces"
    assert res["captures"] == 2 and res["packets"] == 24
    assert res["packet_agreement"] == 1.0 and res["flow_agreement"] == 1.0
    assert res["bit_exact"] is True
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"tin{os.getpid() % 100000}x" not in listed  # every namespace removed
