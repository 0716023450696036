"""Reading an HTTP request body under a cap: Content-Encoding and over-cap bodies.

Contract of `read_body(scope, receive, cap)`:
- returns the body bytes, decoded when `Content-Encoding` is gzip or deflate (zlib-wrapped or
  raw); the cap applies to the DECODED size, and decompression never inflates more than
  cap + 1 bytes (a zip bomb costs at most the cap);
- a body over the cap (declared by Content-Length, or found while reading) is read and thrown
  away up to `DRAIN_BOUND` bytes before `OIPError(413)` is raised, so a client still sending
  (urllib, requests) reads the 413 instead of a connection reset; beyond the bound it stops
  reading (the server then closes the connection);
- 400 for a bad Content-Length or a corrupt compressed stream, 415 for another encoding.
"""

from __future__ import annotations

import zlib
from typing import Any

from tidal.dataplane.oip import OIPError

DRAIN_BOUND = 64 << 20
"""Bytes of an over-cap body read and discarded before answering 413 (64 MiB: a few tens of
ms of loopback traffic; a client sending more sees the connection close instead)."""


def _decoder(encoding: bytes) -> Any:
    enc = encoding.strip().lower()
    if enc in (b"", b"identity"):
        return None
    if enc in (b"gzip", b"x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if enc == b"deflate":
        return _Deflate()
    raise OIPError(415, f"unsupported Content-Encoding {enc.decode('latin-1')!r}; "
                   "supported: gzip, deflate, identity")  # fmt: skip


class _Deflate:
    """HTTP `deflate`: zlib-wrapped per RFC 9110, raw deflate accepted too (some clients)."""

    def __init__(self) -> None:
        self.d: Any = None
        self.unconsumed_tail = b""
        self.eof = False

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self.d is None:
            raw = not data or (data[0] & 0x0F) != 8  # zlib header: CM = 8
            self.d = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
        out: bytes = self.d.decompress(data, max_length)
        self.unconsumed_tail = self.d.unconsumed_tail
        self.eof = self.d.eof
        return out


async def _drain(receive: Any, more: bool, got: int) -> None:
    while more and got < DRAIN_BOUND:
        msg = await receive()
        if msg["type"] != "http.request":
            return
        got += len(msg.get("body", b""))
        more = bool(msg.get("more_body"))


async def read_body(scope: dict[str, Any] | Any, receive: Any, cap: int) -> bytes:
    """The request body, decoded and capped (see the module contract)."""
    declared: int | None = None
    encoding = b""
    for k, v in scope["headers"]:
        if k == b"content-length":
            try:
                declared = int(v)
            except ValueError:
                raise OIPError(400, f"bad Content-Length {v!r}") from None
        elif k == b"content-encoding":
            encoding = v
    dec = _decoder(encoding)
    if declared is not None and declared > cap and dec is None:
        await _drain(receive, True, 0)
        raise OIPError(413, f"body of {declared} bytes exceeds the cap of {cap} bytes")
    parts: list[bytes] = []
    wire = size = 0
    more = True
    while more:
        msg = await receive()
        if msg["type"] != "http.request":
            raise OIPError(400, "client disconnected before the body was complete")
        chunk: bytes = msg.get("body", b"")
        more = bool(msg.get("more_body"))
        wire += len(chunk)
        if dec is not None and chunk:
            try:
                out = dec.decompress(chunk, cap + 1 - size)
            except zlib.error as e:
                await _drain(receive, more, wire)
                raise OIPError(400, f"corrupt {encoding.decode('latin-1')} body: {e}") from None
            if dec.unconsumed_tail:
                out += b"x"  # more output is pending: the decoded body is over the cap
            chunk = out
        size += len(chunk)
        if size > cap or wire > cap:
            await _drain(receive, more, wire)
            what = "decoded body" if dec is not None else "body"
            raise OIPError(413, f"{what} exceeds the cap of {cap} bytes")
        parts.append(chunk)
    if dec is not None and not dec.eof and wire:
        raise OIPError(400, f"truncated {encoding.decode('latin-1')} body")
    return parts[0] if len(parts) == 1 else b"".join(parts)
