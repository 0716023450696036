"""Re-drawn host fingerprints change the frames but not the channel features; the groups and
folds of the leave-one-group-out study hold out whole connections."""

from __future__ import annotations

import warnings

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

from tidal.innet import dataset, logo
from tidal.innet.features import channel_bytes, packet_bytes, payload_length
from tidal.innet.perturb import KINDS, perturb_frames


def _conn() -> tuple[list[bytes], list[int]]:
    frames, ts = [], []
    opts = [("MSS", 1460), ("NOP", None), ("WScale", 7), ("SAckOK", b""), ("Timestamp", (9, 0))]
    for i in range(30):
        c2s = i % 2 == 0
        ip = IP(src="10.0.0.1", dst="10.0.0.2") if c2s else IP(src="10.0.0.2", dst="10.0.0.1")
        later = [("NOP", None), ("NOP", None), ("Timestamp", (i, i))]
        tcp = TCP(
            sport=4000 if c2s else 80,
            dport=80 if c2s else 4000,
            flags="S" if i == 0 else "PA",
            window=501,
            options=opts if i == 0 else later,
        )
        frames.append(bytes(Ether() / ip / tcp / (b"d" * (i % 7))))
        ts.append(1_000_000 + 40_000 * i)
    return frames, ts


def test_redrawn_fingerprints_change_frames_but_not_channel_bytes() -> None:
    frames, ts = _conn()
    for kinds in [(k,) for k in KINDS] + [KINDS]:
        new = perturb_frames(frames, ts, kinds, seed=7)
        assert new != frames  # something really was re-drawn
        assert [channel_bytes(f) for f in new] == [channel_bytes(f) for f in frames]
        assert [payload_length(f) for f in new] == [payload_length(f) for f in frames]
    everything = perturb_frames(frames, ts, KINDS, seed=7)
    # the earlier masking kept TTL, window and the option layout: it does change
    assert [packet_bytes(f) for f in everything] != [packet_bytes(f) for f in frames]


def test_rebuilt_packet_sets_have_identical_side_features() -> None:
    frames, ts = _conn()
    b = dataset._Builder(1024, 60_000_000)
    b.add_frames("x/a.pcap", frames, ts, dataset.COVERT, False)
    ps = b.build()
    again = dataset.rebuild(ps, lambda fr, t: perturb_frames(fr, t, KINDS, seed=3))
    assert np.array_equal(again.x, ps.x) and np.array_equal(again.side, ps.side)
    assert not np.array_equal(again.x_raw, ps.x_raw)
    # the covert capture's sender is the payload-heavier direction, the other is RETURN
    assert sorted(f.label for f in ps.flows) == [dataset.RETURN, dataset.COVERT]


def _flow(file: str, label: int, conn: str) -> dataset.FlowInfo:
    return dataset.FlowInfo(file, (6, b"a", b"b", 1, 2), label, False, conn)


def test_groups_of_capture_names() -> None:
    g = logo.groups_of(_flow("nefias/TCC_SCC_ethernet/TCC_Faust_GZ_40_80.pcap", 1, "c"))
    assert g == {"technique": "TCC", "timing": "40_80", "message": "Faust_GZ"}
    g = logo.groups_of(_flow("nefias/x/Size_Mod_1000_1001_300ms_0925_1800.pcap", 1, "c"))
    assert g == {"technique": "Size", "timing": "300ms", "message": "1000_1001"}
    assert logo.groups_of(_flow("benign-zeek/http/a.pcap", 0, "c")) == {"family": "http"}
    assert logo.groups_of(_flow("benign-zeek/dns-edns-ecs.pcap", 0, "c")) == {"family": "dns"}


def test_folds_hold_out_whole_connections_and_every_family_once() -> None:
    flows = []
    for i, name in enumerate(["SCC_A_40", "SCC_B_40", "TCC_A_40_80", "TCC_B_40_80"]):
        for lab in (1, -1):
            flows.append(_flow(f"nefias/t/{name}.pcap", lab, f"cov{i}"))
    for j, fam in enumerate(["http", "ssh", "dns", "tls", "smb"]):
        for d in range(3):
            flows.append(_flow(f"benign-zeek/{fam}/f{d}.pcap", 0, f"ben{j}.{d}"))
    n = len(flows)
    ps = dataset.PacketSet(
        x=np.zeros((n, 68), np.uint8), x_raw=np.zeros((n, 68), np.uint8),
        side=np.zeros(n, np.uint8), y=np.array([f.label for f in flows]), flow=np.arange(n),
        flows=flows,
    )  # fmt: skip
    folds = logo.folds(ps)
    names = [nm for f in folds for nm in f.names]
    assert {"technique=SCC", "technique=TCC", "message=A", "message=B"} <= set(names)
    fams = [fa for f in folds for fa in f.benign_families]
    assert sorted(fams) == sorted(["http", "ssh", "dns", "tls", "smb"])
    for f in folds:
        tr, te = logo.fold_split(ps, f)
        assert not ({flows[i].connection for i in tr} & {flows[i].connection for i in te})
        assert any(flows[i].label == 1 for i in te) and any(flows[i].label == 0 for i in te)
