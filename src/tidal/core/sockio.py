"""Blocking socket helpers shared by the layers that may not import each other (the data
plane's IPC and the CEP embedded store both read length-prefixed messages)."""

from __future__ import annotations

import socket


def recv_exactly(sock: socket.socket, n: int) -> bytearray:
    """Blocking read of exactly `n` bytes; EOFError if the peer closed first."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("peer closed the connection")
        got += k
    return buf
