import numpy as np

from tidal.innet.fabric import Fabric, input_frames
from tidal.innet.header import Frame, decode, encode
from tidal.innet.intref import IntNet
from tidal.innet.program import Mapping
from tidal.innet.switch import Switch


def test_header_roundtrip_through_scapy() -> None:
    f = Frame(3, 123456, 1, 1, 2, 4, 10, np.array([-(2**31), 0, 2**31 - 1]))
    g = decode(encode(f))
    assert (g.stream, g.index, g.replica, g.fragment, g.nfrag, g.width, g.offset) == (
        3,
        123456,
        1,
        1,
        2,
        4,
        10,
    )
    assert g.vector.tolist() == f.vector.tolist()


def test_frames_path_equals_batch_path_and_reference(
    mapping: Mapping, net: IntNet, samples: tuple[np.ndarray, np.ndarray]
) -> None:
    x, iat = samples
    fab = Fabric(mapping)
    v = fab.run_frames(x[:12], iat[:12])
    assert np.array_equal(v, net.predict(x[:12], iat[:12]))
    assert fab.hop_count() >= 3


def test_window_waits_for_every_frame(mapping: Mapping) -> None:
    last = [p for p in mapping.programs if -1 in p.emit.next_hops][0]
    assert last.window >= 2
    sw = Switch(last)
    a = last.accepts[0]
    f = Frame(
        a.stream,
        5,
        a.replica,
        0,
        a.frags,
        a.width,
        0,
        np.zeros(-(-a.length // a.frags), dtype=np.int64),
    )
    assert sw.receive(encode(f)) == []  # window incomplete: nothing emitted
    assert sw.counters["emitted_samples"] == 0


def test_malformed_frames_are_dropped_and_counted(mapping: Mapping) -> None:
    sw = Switch(mapping.programs[0])
    good = encode(input_frames(1, np.zeros(68), 3, mapping.input_frag)[0])
    bad = [
        b"\x00" * 10,  # runt
        good[:12] + b"\x08\x00" + good[14:],  # foreign ethertype
        good[:14] + b"\x07" + good[15:],  # wrong version
        good[:-5],  # vector shorter than its count
        encode(Frame(99, 1, 0, 0, 1, 1, 0, np.zeros(68, dtype=np.int64))),  # unknown stream
        encode(Frame(0, 1, 0, 0, 1, 1, 60, np.zeros(68, dtype=np.int64))),  # out of range
    ]
    for raw in bad:
        assert sw.receive(raw) == []
    assert sw.counters["malformed"] == len(bad)
    assert len(sw.receive(good)) >= 1  # still works afterwards
