"""HTTP/1.1 response framing for `tidal.dataplane.server`: the status line and headers
(`Content-Length`, else chunked; `Connection: close` when the connection will close), a
JSON error answer, chunks, and the response side of one exchange (`Exchange`)."""

from __future__ import annotations

from http import HTTPStatus

_PHRASES = {s.value: s.phrase.encode() for s in HTTPStatus}


def response_head(status: int, headers: list[tuple[bytes, bytes]], length: int | None,
                   close: bool) -> bytes:  # fmt: skip
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, _PHRASES.get(status, b"Unknown"))]
    for k, v in headers:
        parts.append(b"%s: %s\r\n" % (k, v))
    if length is not None:
        parts.append(b"content-length: %d\r\n" % length)
    else:
        parts.append(b"transfer-encoding: chunked\r\n")
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def error(status: int, message: str) -> bytes:
    body = b'{"error":"%s"}' % message.replace('"', "'").encode()
    return response_head(status, [(b"content-type", b"application/json")], len(body), True) + body


def chunk(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(body), body) if body else b""


class Exchange:
    """The response side of one request/response exchange."""

    __slots__ = ("keep", "status", "headers", "chunked", "done", "body_given")

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.chunked = False
        self.done = False
        self.body_given = False

    def head(self, first: bytes, more: bool) -> bytes:
        """The status line and headers, sent with the first body part."""
        hdrs = self.headers or []
        self.headers = None
        length: int | None = None
        for k, v in hdrs:
            kl = k.lower()
            if kl == b"content-length":
                length = int(v)
            elif kl == b"connection" and v.lower() == b"close":
                self.keep = False
        if length is not None:
            hdrs = [h for h in hdrs if h[0].lower() != b"content-length"]
        elif not more:
            length = len(first)
        else:
            self.chunked = True
        return response_head(self.status, hdrs, length, not self.keep)


__all__ = ["Exchange", "chunk", "error", "response_head"]
