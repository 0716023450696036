"""Capture files -> features -> model -> switch emulator -> metrics, and the CLI's errors."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from scapy.all import wrpcap

from scapy.layers.l2 import Ether

from tidal.innet.evaluate import evaluate
from tidal.innet.synthetic import synthetic_benign, synthetic_covert

KEYS = {
    "covert_recall", "benign_false_positive_rate", "flow_accuracy", "f1", "packet_accuracy",
    "benign_packet_accuracy", "return_flagged_rate", "bit_exact", "switches",
    "max_stages_per_switch", "header_bits", "register_bytes", "flows", "covert_flows",
    "benign_flows", "return_flows", "packets", "k", "mean_packets_to_decision",
        "need", "per_direction",
    "split", "synthetic_benign",
}  # fmt: skip


def _write(d: Path, flows: object) -> None:
    d.mkdir()
    for name, frames, ts in flows:  # type: ignore[attr-defined]
        pkts = []
        for f, t in zip(frames, ts, strict=True):
            p = Ether(f)
            p.time = t / 1e6
            pkts.append(p)
        wrpcap(str(d / (name.rsplit("/", 1)[-1] + ".pcap")), pkts)


def test_evaluate_runs_end_to_end_on_capture_files(tmp_path: Path) -> None:
    _write(tmp_path / "cov", synthetic_covert(2, seed=5))
    _write(tmp_path / "ben", synthetic_benign(4, seed=5))
    # A truncated capture: reported, its good records kept.
    raw = (tmp_path / "ben" / "benign_reqresp_0.pcap").read_bytes()
    (tmp_path / "ben" / "cut.pcap").write_bytes(raw[:-7])
    res = evaluate([tmp_path / "cov"], [tmp_path / "ben"])  # given captures: scored whole
    assert set(res) >= KEYS
    assert res["split"].startswith("all")
    assert res["bit_exact"] is True
    assert res["covert_flows"] == 2 and res["return_flows"] == 2  # senders vs pure ACKs
    assert res["benign_flows"] == 5 and res["packets"] > 100  # 4 + the truncated copy
    assert {"covert_sender/initiator", "covert_return/responder"} <= set(res["per_direction"])
    assert res["switches"] >= 5 and res["max_stages_per_switch"] <= 12
    ent = res["entry_exit_switches"]["entry_switch"]
    assert ent["stages"] <= 12 and ent["register_bytes"] <= 65536
    assert any("cut.pcap" in i and "offset" in i for i in res["capture_issues"])
    assert res["synthetic_benign"] is False  # files on disk are taken as given, not synthetic


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidal.cli.main", "innet", *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_cli_budget_too_small_is_a_one_line_error() -> None:
    r = _cli("map", "--stages", "3")
    assert r.returncode == 2
    assert "layer conv1" in r.stderr and "over by" in r.stderr


def test_cli_evaluate_json_on_given_dirs(tmp_path: Path) -> None:
    _write(tmp_path / "c", synthetic_covert(2, seed=9))
    _write(tmp_path / "b", synthetic_benign(4, seed=9))
    r = _cli("evaluate", "--covert", str(tmp_path / "c"), "--benign", str(tmp_path / "b"),
             "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == KEYS and out["bit_exact"] is True
    assert out["packets"] == sum(len(f[1]) for f in synthetic_covert(2, seed=9)) + sum(
        len(f[1]) for f in synthetic_benign(4, seed=9)
    )  # every packet of the given captures, no hash-chosen subset


def test_cli_frames_in_process_agrees_with_the_vectorised_path(tmp_path: Path) -> None:
    _write(tmp_path / "c", synthetic_covert(1, seed=2))
    _write(tmp_path / "b", synthetic_benign(2, seed=2))
    r = _cli("evaluate", "--covert", str(tmp_path / "c"), "--benign", str(tmp_path / "b"),
             "--frames", "20", "--in-process", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["packet_agreement"] == 1.0 and out["bit_exact"] is True
    assert out["captures"] == 3 and out["transport"] == "in-process"


def test_cli_missing_directory_names_it(tmp_path: Path) -> None:
    r = _cli("evaluate", "--covert", str(tmp_path / "nope"), "--json")
    assert r.returncode == 2 and "nope" in r.stderr
