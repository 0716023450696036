"""The embedded store's wire format and its client (no dependency on the store itself).

Messages are a u32 little-endian length plus one value in a tiny tagged encoding (None,
bool, int, float, bytes, str, list): never pickle. Messages are capped at `MAX_MESSAGE`
bytes. `SocketStore` is the client of `tidal.cep.sockstore.SocketStoreServer`; it lives here
so that `tidal.cep.store.open_store` can open ``unix://`` URLs without an import cycle.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Sequence
from typing import Any

from tidal.core.errors import TidalError
from tidal.core.sockio import recv_exactly

Op = tuple[Any, ...]

MAX_MESSAGE = 256 * 1024 * 1024
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")


def encode(v: Any, out: bytearray) -> None:
    """Append the tagged encoding of `v` to `out`."""
    if v is None:
        out += b"N"
    elif v is True:
        out += b"T"
    elif v is False:
        out += b"F"
    elif isinstance(v, int):
        out += b"I"
        out += _I64.pack(v)
    elif isinstance(v, float):
        out += b"D"
        out += _F64.pack(v)
    elif isinstance(v, bytes | bytearray | memoryview):
        out += b"B"
        out += _U32.pack(len(v))
        out += v
    elif isinstance(v, str):
        b = v.encode()
        out += b"S"
        out += _U32.pack(len(b))
        out += b
    elif isinstance(v, list | tuple):
        out += b"L"
        out += _U32.pack(len(v))
        for x in v:
            encode(x, out)
    else:
        raise TidalError(f"cannot encode value of type {type(v).__name__}")


def decode(buf: bytes, pos: int = 0) -> tuple[Any, int]:
    """Decode one value from `buf` at `pos`; returns (value, next position)."""
    tag = buf[pos : pos + 1]
    pos += 1
    if tag == b"N":
        return None, pos
    if tag == b"T":
        return True, pos
    if tag == b"F":
        return False, pos
    if tag == b"I":
        return _I64.unpack_from(buf, pos)[0], pos + 8
    if tag == b"D":
        return _F64.unpack_from(buf, pos)[0], pos + 8
    if tag in (b"B", b"S"):
        (n,) = _U32.unpack_from(buf, pos)
        pos += 4
        raw = buf[pos : pos + n]
        return (bytes(raw) if tag == b"B" else raw.decode()), pos + n
    if tag == b"L":
        (n,) = _U32.unpack_from(buf, pos)
        pos += 4
        items = []
        for _ in range(n):
            x, pos = decode(buf, pos)
            items.append(x)
        return items, pos
    raise TidalError(f"bad tag {tag!r} in store message")


def _send_msg(sock: socket.socket, v: Any) -> None:
    body = bytearray(b"\x00\x00\x00\x00")
    encode(v, body)
    _U32.pack_into(body, 0, len(body) - 4)
    sock.sendall(body)


def _recv_msg(sock: socket.socket) -> Any:
    (n,) = _U32.unpack(recv_exactly(sock, 4))
    if n > MAX_MESSAGE:
        raise TidalError(f"store message of {n} bytes exceeds {MAX_MESSAGE}")
    return decode(bytes(recv_exactly(sock, n)))[0]


class SocketStore:
    """Client of a `SocketStoreServer`. One connection; calls are serialized by a lock."""

    def __init__(self, url: str) -> None:
        self.url = url
        path = url[len("unix://") :]
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(path)
        except OSError as e:
            raise TidalError(f"cannot connect to embedded store {url!r}: {e}") from None
        self._lock = threading.Lock()

    def _call(self, req: list[Any]) -> Any:
        with self._lock:
            _send_msg(self._sock, req)
            status, val = _recv_msg(self._sock)
        if status != "ok":
            raise TidalError(str(val))
        return val

    def execute(self, ops: Sequence[Op]) -> list[Any]:
        return list(self._call(["x", [list(op) for op in ops]]))

    def push(self, key: str, items: Sequence[bytes]) -> None:
        if items:
            self._call(["p", key, list(items)])

    def blpop(self, key: str, timeout: float) -> bytes | None:
        v = self._call(["b", key, float(timeout)])
        return None if v is None else bytes(v)

    def wait(self, key: str, timeout: float) -> bool:
        return bool(self._call(["w", key, float(timeout)]))

    def clone(self) -> SocketStore:
        """A second connection to the same store (calls on one connection serialize)."""
        return SocketStore(self.url)

    def close(self) -> None:
        self._sock.close()
