"""Reading packet captures (classic pcap and pcapng, optionally gzip-compressed).

Contract: `read_capture(path)` returns every readable record as a normalized Ethernet frame with
its timestamp in microseconds, plus a list of `CaptureIssue` (file and byte offset) for records
it had to skip. A truncated or corrupt record never raises: it is reported and skipped (the
reader resynchronizes on the next plausible record header). A file that is not a capture at all
raises `TidalError` naming the file.

Link layers other than Ethernet (BSD loopback, Linux cooked SLL/SLL2, raw IP) are rewritten as
Ethernet frames with zero MAC addresses, so every downstream byte offset is the same.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass, field
from pathlib import Path

from tidal.core.errors import TidalError

CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz", ".cap.gz")
MAX_RECORD = 262_144  # largest snaplen in use; anything bigger is a corrupt length field

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1),
    b"\x4d\x3c\xb2\xa1": ("<", 1000),  # nanoseconds: divide by 1000
    b"\xa1\xb2\x3c\x4d": (">", 1000),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"


@dataclass(frozen=True)
class CaptureIssue:
    """A record that was skipped: which file, at which byte offset, and why."""

    file: str
    offset: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}: offset {self.offset}: {self.message}"


@dataclass
class Capture:
    """Frames of one capture file: `frames[i]` was captured at `ts_us[i]` (microseconds)."""

    path: str
    frames: list[bytes] = field(default_factory=list)
    ts_us: list[int] = field(default_factory=list)
    issues: list[CaptureIssue] = field(default_factory=list)


def is_capture(path: Path) -> bool:
    """True when the file name has a capture suffix (compressed or not)."""
    name = path.name.lower()
    return any(name.endswith(s) for s in CAPTURE_SUFFIXES)


def find_captures(root: Path) -> list[Path]:
    """Capture files under `root` (or `root` itself), sorted for determinism."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise TidalError(f"capture directory {str(root)!r} does not exist")
    return sorted(p for p in root.rglob("*") if p.is_file() and is_capture(p))


def to_ethernet(linktype: int, buf: bytes) -> bytes | None:
    """Rewrite one link-layer frame as Ethernet; None for link types without IP inside."""
    if linktype == 1:
        return buf
    if linktype in (0, 108):  # BSD loopback: 4-byte address family
        ip = buf[4:]
    elif linktype == 113:  # Linux cooked capture v1
        ip = buf[16:]
    elif linktype == 276:  # Linux cooked capture v2
        ip = buf[20:]
    elif linktype in (12, 14, 101, 228, 229):  # raw IP
        ip = buf
    else:
        return None
    if not ip:
        return None
    version = ip[0] >> 4
    ethertype = b"\x86\xdd" if version == 6 else b"\x08\x00"
    return b"\x00" * 12 + ethertype + ip


def _decompress(path: Path, raw: bytes, issues: list[CaptureIssue]) -> bytes:
    if not raw.startswith(b"\x1f\x8b"):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as e:
        # Truncated gzip: keep what decompresses.
        d = gzip.GzipFile(fileobj=__import__("io").BytesIO(raw))
        out = bytearray()
        try:
            while chunk := d.read(65536):
                out += chunk
        except (OSError, EOFError):
            pass
        issues.append(CaptureIssue(str(path), len(out), f"gzip stream damaged ({e})"))
        return bytes(out)


def read_capture(path: Path) -> Capture:
    """Read one pcap/pcapng file (gzip allowed). Bad records are skipped and reported."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TidalError(f"cannot read capture {str(path)!r}: {e}") from e
    cap = Capture(path=str(path))
    data = _decompress(path, raw, cap.issues)
    if data[:4] in _PCAP_MAGICS:
        _read_pcap(data, cap)
    elif data[:4] == _PCAPNG_SHB:
        _read_pcapng(data, cap)
    else:
        raise TidalError(f"{str(path)!r} is not a pcap or pcapng file (magic {data[:4].hex()})")
    return cap


def _read_pcap(data: bytes, cap: Capture) -> None:
    endian, ts_div = _PCAP_MAGICS[data[:4]]
    if len(data) < 24:
        cap.issues.append(CaptureIssue(cap.path, 0, "truncated global header"))
        return
    snaplen, linktype = struct.unpack(endian + "II", data[16:24])
    linktype &= 0xFFFF
    limit = max(snaplen, 65535) if 0 < snaplen <= MAX_RECORD else MAX_RECORD
    hdr = struct.Struct(endian + "IIII")
    off, n = 24, len(data)
    last_sec = None
    while off < n:
        if off + 16 > n:
            cap.issues.append(
                CaptureIssue(cap.path, off, f"truncated record header ({n - off} of 16 bytes)")
            )
            return
        sec, frac, incl, orig = hdr.unpack_from(data, off)
        plausible = incl <= limit
        if not plausible:
            cap.issues.append(
                CaptureIssue(cap.path, off, f"corrupt record header (caplen {incl}); skipped")
            )
            nxt = _resync_pcap(data, off + 1, hdr, limit, last_sec)
            if nxt is None:
                return
            off = nxt
            continue
        if off + 16 + incl > n:
            cap.issues.append(
                CaptureIssue(
                    cap.path, off, f"truncated record (caplen {incl}, {n - off - 16} bytes left)"
                )
            )
            return
        buf = data[off + 16 : off + 16 + incl]
        frame = to_ethernet(linktype, buf)
        if frame is not None:
            cap.frames.append(frame)
            cap.ts_us.append(sec * 1_000_000 + frac // ts_div)
        last_sec = sec
        off += 16 + incl


def _resync_pcap(
    data: bytes, start: int, hdr: struct.Struct, limit: int, last_sec: int | None
) -> int | None:
    """Offset of the next plausible record (two consecutive valid headers), or None."""
    n = len(data)
    for off in range(start, n - 16):
        sec, _frac, incl, orig = hdr.unpack_from(data, off)
        if incl == 0 or incl > limit or orig < incl:
            continue
        nxt = off + 16 + incl
        if nxt == n:
            return off
        if nxt + 16 <= n:
            sec2, _f2, incl2, orig2 = hdr.unpack_from(data, nxt)
            if incl2 <= limit and orig2 >= incl2:
                return off
    return None


def _read_pcapng(data: bytes, cap: Capture) -> None:
    off, n = 0, len(data)
    endian = "<"
    ifaces: list[tuple[int, int]] = []  # (linktype, ticks per second)
    while off < n:
        if off + 12 > n:
            cap.issues.append(CaptureIssue(cap.path, off, "truncated block header"))
            return
        btype = data[off : off + 4]
        if btype == _PCAPNG_SHB:
            endian = "<" if data[off + 8 : off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            ifaces = []
        (btype_i, blen) = struct.unpack_from(endian + "II", data, off)
        if blen < 12 or blen % 4 or off + blen > n:
            what = "truncated" if off + blen > n and blen >= 12 else "corrupt"
            cap.issues.append(CaptureIssue(cap.path, off, f"{what} block (length {blen}); skipped"))
            nxt = _resync_pcapng(data, off + 4, endian)
            if nxt is None:
                return
            off = nxt
            continue
        body = data[off + 8 : off + blen - 4]
        if btype_i == 1:  # interface description
            linktype = struct.unpack_from(endian + "H", body, 0)[0]
            ifaces.append((linktype, _tsresol(body[8:], endian)))
        elif btype_i in (6, 3):
            try:
                _pcapng_packet(btype_i, body, endian, ifaces, cap)
            except (struct.error, IndexError) as e:
                cap.issues.append(CaptureIssue(cap.path, off, f"corrupt packet block ({e})"))
        off += blen


def _resync_pcapng(data: bytes, start: int, endian: str) -> int | None:
    """Offset of the next block whose leading and trailing lengths agree, or None."""
    n = len(data)
    for off in range(start - start % 4, n - 12, 4):
        btype, blen = struct.unpack_from(endian + "II", data, off)
        if btype not in (1, 3, 5, 6) or blen < 12 or blen % 4 or off + blen > n:
            continue
        if struct.unpack_from(endian + "I", data, off + blen - 4)[0] == blen:
            return off
    return None


def _tsresol(opts: bytes, endian: str) -> int:
    o = 0
    while o + 4 <= len(opts):
        code, length = struct.unpack_from(endian + "HH", opts, o)
        if code == 0:
            break
        if code == 9 and length >= 1:
            v = opts[o + 4]
            return 2 ** (v & 0x7F) if v & 0x80 else 10 ** (v & 0x7F)
        o += 4 + ((length + 3) // 4) * 4
    return 1_000_000


def _pcapng_packet(
    btype: int, body: bytes, endian: str, ifaces: list[tuple[int, int]], cap: Capture
) -> None:
    if btype == 6:
        iface, hi, lo, incl, _orig = struct.unpack_from(endian + "IIIII", body, 0)
        buf = body[20 : 20 + incl]
        if len(buf) < incl:
            raise IndexError(f"caplen {incl} exceeds block")
        linktype, res = ifaces[iface]
        ticks = (hi << 32) | lo
        ts = ticks * 1_000_000 // res
    else:  # simple packet block: no timestamp; keep the previous one
        linktype, _res = ifaces[0]
        buf = body[4:]
        ts = cap.ts_us[-1] if cap.ts_us else 0
    frame = to_ethernet(linktype, buf)
    if frame is not None:
        cap.frames.append(frame)
        cap.ts_us.append(ts)
