"""The entry switch parses real frames into the same features as the host-side reference;
the whole chain on real frames equals the vectorised path."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, Dot1Q, Ether

from tidal.core.clock import SimClock
from tidal.innet import dataset
from tidal.innet.chain import Chain, flows_from_decisions
from tidal.innet.evaluate import vectorised
from tidal.innet.extract import Extractor, deparse, flow_key_of, parse, payload_of
from tidal.innet.features import channel_bytes, flow_key, payload_length, quantize_iat
from tidal.innet.header import decode
from tidal.innet.header_scapy import decode_scapy, encode_scapy
from tidal.innet.mapper import map_network
from tidal.innet.program import STREAM_IAT
from tidal.innet.synthetic import synthetic_benign, synthetic_covert

FRAMES: list[Any] = [  # scapy packets (untyped) and raw bytes
    Ether() / IP(ttl=3, tos=0x10, flags="DF") / TCP(flags="PA", urgptr=7,
        options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 2))]) / (b"x" * 30),
    Ether() / Dot1Q(vlan=5) / IP(options=b"\x94\x04\x00\x00") / UDP(sport=53) / (b"q" * 12),
    Ether() / IPv6(tc=0xB8, fl=12345) / TCP(flags="S") / b"",
    Ether() / IPv6() / UDP() / (b"z" * 100),
    Ether() / IP(frag=3, proto=6) / b"fragment",
    Ether() / IP() / ICMP(type=8, id=4, seq=9) / b"ping",
    Ether() / ARP(),
    bytes(Ether() / IP() / TCP())[:42],  # a TCP header cut short by the capture
]  # fmt: skip


@pytest.mark.parametrize("i", range(len(FRAMES)))
def test_parser_and_deparser_equal_the_reference_features(i: int) -> None:
    raw = FRAMES[i] if isinstance(FRAMES[i], bytes) else bytes(FRAMES[i])
    p = parse(raw)
    n = payload_of(p, len(raw))
    assert n == payload_length(raw)
    assert flow_key_of(p) == flow_key(raw)
    assert deparse(p, n) == channel_bytes(raw)


def test_fast_header_codec_equals_scapy() -> None:
    from tidal.innet.header import Frame, encode

    f = Frame(3, 99, 1, 0, 2, 2, 4, np.array([-5, 7, 300]))
    assert encode(f) == encode_scapy(f)
    a, b = decode(encode(f)), decode_scapy(encode(f))
    assert (a.stream, a.index, a.offset) == (b.stream, b.index, b.offset)
    assert np.array_equal(a.vector, b.vector)


def test_live_mode_timestamps_frames_with_the_switch_clock() -> None:
    clock = SimClock(100.0)
    ex = Extractor({STREAM_IAT: [-1]}, clock=clock)
    raw = bytes(Ether() / IP(src="1.2.3.4") / TCP(sport=5, dport=6) / b"abc")
    sides = []
    for gap in (0.0, 0.040, 0.080, 0.040):
        clock.advance(gap)
        (out,) = ex.receive(raw)  # a plain frame: no replay shim, the switch's own time
        sides.append(decode(out[1]).vector.tolist())
    q40, q80 = quantize_iat(40_000), quantize_iat(80_000)
    assert [s[0] for s in sides] == [0, q40, q80, q40]
    assert sides[3][1] == q80 and sides[3][4] == 128 + (q40 - q80)


def _packets(tmp: object) -> dataset.PacketSet:
    b = dataset._Builder(1024, 60_000_000)
    for name, frames, ts in list(synthetic_covert(2, seed=4)) + list(synthetic_benign(4, seed=4)):
        b.add_frames(name, frames[:24], ts[:24], int("covert" in name), True)
    return b.build()


def test_chain_on_real_frames_equals_the_vectorised_path(model_net: object = None) -> None:
    import torch

    from tidal.innet.qmodel import NetNN

    torch.manual_seed(2)
    net = NetNN(side=(True,) * 8).to_int()  # every side feature, the modulation counters too
    mapping = map_network(net)
    ps = _packets(None)
    verdict, logits, flows = vectorised(net, mapping, ps, 8, None)
    chain = Chain(mapping, 8, 1024, 60_000_000)
    assert ps.frames is not None and ps.ts is not None
    files = sorted({f.file for f in ps.flows})
    decision = np.zeros(len(ps), dtype=np.int64)
    for name in files:
        rows = [i for i in range(len(ps)) if ps.flows[ps.flow[i]].file == name]
        r = chain.run_frames([ps.frames[i] for i in rows], [int(ps.ts[i]) for i in rows])
        assert np.array_equal(r.x, ps.x[rows]) and np.array_equal(r.side, ps.side[rows])
        assert np.array_equal(r.verdict, verdict[rows])
        assert np.array_equal(r.logits, logits[rows])
        decision[rows] = r.decision
    assert np.array_equal(flows_from_decisions(decision, ps.flow, len(ps.flows)), flows)


def test_entry_and_exit_switches_count_malformed_frames_and_never_raise() -> None:
    from tidal.innet.extract import Decider

    ex, dec = Extractor({}), Decider()
    assert ex.receive(b"\x01\x02") == [] and ex.counters["malformed"] == 1  # a runt
    bad = b"\xff" * 6 + b"\x02" * 6 + b"\x88\xb5" + b"\x09" * 20  # bad header version
    assert dec.receive(bad) == [] and dec.counters["malformed"] == 1
