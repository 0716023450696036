"""The embedded store served over a unix socket: operator processes, no server process.

The host process owns a `MemoryStore` and serves it with `SocketStoreServer` on a unix
socket (file mode 0600); operator processes use `SocketStore` (`tidal.cep.sockwire`,
re-exported here), which speaks the same command set as Redis. The wire format (length-
prefixed tagged values, never pickle) is in `tidal.cep.sockwire`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Any

from tidal.cep.sockwire import (
    MAX_MESSAGE,
    SocketStore,
    _recv_msg,
    _send_msg,
    decode,
    encode,
)
from tidal.cep.store import MemoryStore
from tidal.core.errors import TidalError

__all__ = ["MAX_MESSAGE", "SocketStore", "SocketStoreServer", "decode", "encode", "serve_forever"]


class SocketStoreServer:
    """Serves `store` on unix socket `path`; one thread per connection. `close()` stops it."""

    def __init__(self, store: MemoryStore, path: str) -> None:
        self.store = store
        self.path = path
        self.url = f"unix://{path}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        os.chmod(path, 0o600)
        self._sock.listen(64)
        self._closed = False
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="cep-sockstore", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                req = _recv_msg(conn)
                try:
                    reply: Any = ["ok", self._handle(req)]
                except TidalError as e:
                    reply = ["err", str(e)]
                _send_msg(conn, reply)
        except (EOFError, OSError, TidalError):  # OSError covers ConnectionError
            pass
        finally:
            conn.close()

    def _handle(self, req: Any) -> Any:
        if not isinstance(req, list) or not req:
            raise TidalError("malformed store request")
        kind = req[0]
        if kind == "x":
            return self.store.execute([tuple(op) for op in req[1]])
        if kind == "p":
            self.store.push(req[1], req[2])
            return None
        if kind == "b":
            return self.store.blpop(req[1], float(req[2]))
        if kind == "w":
            return self.store.wait(req[1], float(req[2]))
        raise TidalError(f"unknown store request {kind!r}")

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def serve_forever(path: str) -> None:
    """Serve a fresh `MemoryStore` on `path` until stdin closes (a store process)."""
    import sys

    srv = SocketStoreServer(MemoryStore("proc"), path)
    print("ready", flush=True)
    try:
        while sys.stdin.read(1):
            pass
    finally:
        srv.close()


if __name__ == "__main__":
    import sys

    serve_forever(sys.argv[1])
