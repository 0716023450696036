import numpy as np
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from tidal.innet import dataset
from tidal.innet.features import connection_key, flow_key, packet_bytes, quantize_iat
from tidal.innet.metrics import flow_verdicts


def _tcp(sport: int = 9999, dport: int = 44000) -> bytes:
    p = (
        Ether(src="02:11:22:33:44:55", dst="02:66:77:88:99:aa")
        / IP(src="143.93.191.117", dst="143.93.191.118", id=4321, ttl=64)
        / TCP(sport=sport, dport=dport, seq=123456, ack=654321, options=[("Timestamp", (5, 6))])
        / b"hello"
    )
    return bytes(p)


def test_masking_removes_addresses_ports_seq_checksums_and_keeps_the_rest() -> None:
    raw = _tcp()
    m = packet_bytes(raw, mask=True)
    u = packet_bytes(raw, mask=False)
    assert len(m) == 68 and u == raw[:68]
    assert m[0:12] == bytes(12)  # MACs
    assert m[18:20] == bytes(2)  # IP id
    assert m[24:34] == bytes(10)  # IP checksum + addresses
    assert m[34:46] == bytes(12)  # ports, seq, ack
    assert m[50:52] == bytes(2)  # TCP checksum
    assert m[22] == 64 and m[23] == 6  # TTL and protocol kept
    assert m[12:14] == b"\x08\x00"
    # A different host/port gives the same masked bytes.
    other = bytes(
        Ether()
        / IP(src="10.0.0.1", dst="10.0.0.2", id=1, ttl=64)
        / TCP(sport=1, dport=2, seq=9, ack=9, options=[("Timestamp", (7, 8))])
        / b"hello"
    )
    assert packet_bytes(other, mask=True) == m


def test_short_frames_are_zero_padded() -> None:
    raw = bytes(Ether() / IP() / UDP(sport=5, dport=6))
    assert packet_bytes(raw, mask=False) == raw + bytes(68 - len(raw))


def test_iat_quantization_is_logarithmic_and_bounded() -> None:
    assert quantize_iat(0) == 0
    assert quantize_iat(40_000) < quantize_iat(80_000) == quantize_iat(40_000) + 10
    assert quantize_iat(10**12) == 255


def test_flow_and_connection_keys() -> None:
    a, b = flow_key(_tcp(9999, 44000)), flow_key(_tcp(44000, 9999))
    assert a != b
    swapped = bytes(
        Ether() / IP(src="143.93.191.118", dst="143.93.191.117") / TCP(sport=44000, dport=9999)
    )
    assert connection_key(flow_key(swapped)) == connection_key(a)


def test_split_never_puts_a_connection_on_both_sides() -> None:
    flows = []
    for i in range(40):
        for d in range(2):
            label = i % 2
            flows.append(
                dataset.FlowInfo(
                    f"dir{i % 3}/f{i}.pcap", (6, b"a", b"b", d, i), label, False, f"conn{i}"
                )
            )
    ps = dataset.PacketSet(
        x=np.zeros((80, 68), np.uint8),
        x_raw=np.zeros((80, 68), np.uint8),
        side=np.zeros(80, np.uint8),
        y=np.array([f.label for f in flows]),
        flow=np.arange(80),
        flows=flows,
    )
    sp = dataset.split(ps)
    train = {flows[i].connection for i in sp["train"]}
    test = {flows[i].connection for i in sp["test"]}
    assert train and test and not (train & test)
    assert set(sp["train"]) | set(sp["test"]) == set(range(80))


def test_flow_verdict_majority_and_first_n() -> None:
    pred = np.array([1, 1, 0, 0, 0, 1, 0, 0])
    flow = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    assert flow_verdicts(pred, flow, 2).tolist() == [0, 0]
    assert flow_verdicts(pred, flow, 2, first_n=2).tolist() == [1, 0]
