import gzip
import struct
from pathlib import Path

import pytest

from tidal.core.errors import TidalError
from tidal.innet.pcap import read_capture


def _pcap(records: list[tuple[int, bytes]], linktype: int = 1) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for ts, data in records:
        out += struct.pack("<IIII", ts, 0, len(data), len(data)) + data
    return out


FRAME = bytes(12) + b"\x08\x00" + bytes([0x45]) + bytes(39)


def test_reads_records_and_timestamps(tmp_path: Path) -> None:
    p = tmp_path / "a.pcap"
    p.write_bytes(_pcap([(1, FRAME), (2, FRAME)]))
    cap = read_capture(p)
    assert cap.ts_us == [1_000_000, 2_000_000]
    assert cap.frames == [FRAME, FRAME]
    assert cap.issues == []


def test_truncated_record_is_reported_with_offset_and_skipped(tmp_path: Path) -> None:
    p = tmp_path / "t.pcap"
    p.write_bytes(_pcap([(1, FRAME), (2, FRAME)])[:-10])
    cap = read_capture(p)
    assert len(cap.frames) == 1
    assert len(cap.issues) == 1
    assert cap.issues[0].offset == 24 + 16 + len(FRAME)
    assert "truncated record" in str(cap.issues[0]) and "t.pcap" in str(cap.issues[0])


def test_corrupt_length_is_skipped_and_reading_resumes(tmp_path: Path) -> None:
    good = _pcap([(1, FRAME), (2, FRAME), (3, FRAME)])
    bad = bytearray(good)
    off = 24 + 16 + len(FRAME)
    bad[off + 8 : off + 12] = struct.pack("<I", 10_000_000)  # absurd caplen
    p = tmp_path / "c.pcap"
    p.write_bytes(bytes(bad))
    cap = read_capture(p)
    assert cap.issues[0].offset == off
    assert "corrupt" in cap.issues[0].message
    assert cap.ts_us[0] == 1_000_000 and cap.ts_us[-1] == 3_000_000


def test_gzip_and_loopback_linktype(tmp_path: Path) -> None:
    ip = bytes([0x45]) + bytes(39)
    p = tmp_path / "l.pcap.gz"
    p.write_bytes(gzip.compress(_pcap([(5, b"\x02\x00\x00\x00" + ip)], linktype=0)))
    cap = read_capture(p)
    assert cap.frames == [bytes(12) + b"\x08\x00" + ip]


def test_not_a_capture_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "x.pcap"
    p.write_bytes(b"hello world, not a pcap")
    with pytest.raises(TidalError, match="x.pcap"):
        read_capture(p)


def test_pcapng_enhanced_packet_blocks(tmp_path: Path) -> None:
    shb_body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
    shb = struct.pack("<II", 0x0A0D0D0A, 12 + len(shb_body)) + shb_body
    shb += struct.pack("<I", 12 + len(shb_body))
    idb_body = struct.pack("<HHI", 1, 0, 65535)
    idb = struct.pack("<II", 1, 12 + len(idb_body)) + idb_body + struct.pack("<I", 20)
    data = FRAME + bytes((4 - len(FRAME) % 4) % 4)
    ts = 7_000_000
    epb_body = struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(FRAME), len(FRAME)) + data
    epb = struct.pack("<II", 6, 12 + len(epb_body)) + epb_body
    epb += struct.pack("<I", 12 + len(epb_body))
    p = tmp_path / "n.pcapng"
    p.write_bytes(shb + idb + epb + epb[:10])
    cap = read_capture(p)
    assert cap.frames == [FRAME]
    assert cap.ts_us == [7_000_000]
    assert cap.issues and cap.issues[0].offset == len(shb + idb + epb)


def test_pcapng_corrupt_block_is_skipped_and_reading_resumes(tmp_path: Path) -> None:
    shb_body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
    shb = struct.pack("<II", 0x0A0D0D0A, 12 + len(shb_body)) + shb_body
    shb += struct.pack("<I", 12 + len(shb_body))
    idb_body = struct.pack("<HHI", 1, 0, 65535)
    idb = struct.pack("<II", 1, 12 + len(idb_body)) + idb_body + struct.pack("<I", 20)
    data = FRAME + bytes((4 - len(FRAME) % 4) % 4)

    def epb(ts: int) -> bytes:
        body = struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(FRAME), len(FRAME)) + data
        return struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    bad = bytearray(epb(2_000_000))
    bad[4:8] = struct.pack("<I", 7)  # corrupt block length
    p = tmp_path / "r.pcapng"
    p.write_bytes(shb + idb + epb(1_000_000) + bytes(bad) + epb(3_000_000))
    cap = read_capture(p)
    assert cap.ts_us == [1_000_000, 3_000_000]
    assert cap.issues[0].offset == len(shb + idb) + len(epb(0))
    assert "corrupt block" in cap.issues[0].message
