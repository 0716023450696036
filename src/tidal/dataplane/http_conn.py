"""One HTTP/1.1 client connection of `tidal.dataplane.server`: the httptools parser callbacks,
the pipeline of parsed requests, and the ASGI call of each, in order.

The contract (keep-alive, pipelining, the body read whole, admission at the headers, the
scope's `tidal.*` state, the body cap) is the one in `tidal.dataplane.server`'s docstring;
the `Server` owns the connection set, the limits and the timeout sweep, and reads `state` and
`since` of each connection to enforce them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol, cast
from urllib.parse import unquote

import httptools

from tidal.dataplane.disconnect import unregister as _unregister
from tidal.dataplane.http_wire import Exchange as _Exchange
from tidal.dataplane.http_wire import chunk as _chunk
from tidal.dataplane.http_wire import error as _error
from tidal.dataplane.http_wire import response_head as _response_head
from tidal.dataplane.lifespan import ASGI as _ASGI
from tidal.dataplane.looplag import LoopWait

log = logging.getLogger("tidal.server")

MAX_PIPELINED = 16
"""Reading pauses while more than this many complete requests wait on one connection."""
# States of the parser side of a connection (the Server's sweep reads them).
NEW, KEEPALIVE, HEADERS, BODY = 0, 1, 2, 3


class Server(Protocol):
    """What a connection uses of `tidal.dataplane.server.Server` (no import: no cycle)."""

    loop: asyncio.AbstractEventLoop
    limits: Any  # ServerLimits
    app: Any
    at_headers: Callable[[dict[str, Any]], Any] | None
    direct: Callable[[dict[str, Any], bytes], Any] | None
    stopping: bool
    wait: LoopWait  # the socket wait before a request is read (its `estimate_s`)

    def admit(self, c: Conn) -> bool: ...
    def forget(self, c: Conn) -> None: ...
    def busy(self, c: Conn) -> None: ...
    def idle(self, c: Conn) -> None: ...


class _Request:
    """One parsed request waiting for (or in) the app."""

    __slots__ = ("scope", "body", "keep_alive", "answer")

    def __init__(
        self, scope: dict[str, Any], body: bytes, keep_alive: bool, answer: bytes | None = None
    ) -> None:
        self.scope = scope
        self.body = body
        self.keep_alive = keep_alive
        self.answer = answer  # answered at the headers: these bytes, the app is not called


def _nothing() -> None:
    return None


class Conn(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(self, server: Server) -> None:
        self.srv = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.state = NEW
        self.since = self.loop.time()
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.pending: list[_Request] = []
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.lost: asyncio.Future[None] | None = None
        self.write_ok: asyncio.Event | None = None
        self.client: Any = None
        self.sockname: Any = None
        self.scheme = "http"
        self.t_first = 0.0
        self.t_headers = 0.0
        self.t_wait = 0.0
        self.discard = False  # answered at the headers: the body is read and dropped
        self.close_after = False  # ... and the connection closes once it has been read

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.client = transport.get_extra_info("peername")
        self.sockname = transport.get_extra_info("sockname")
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        if not self.srv.admit(self):
            self.transport.write(_error(503, "too many open connections, none idle"))
            transport.close()
            self.closed = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.srv.forget(self)
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
        if self.write_ok is not None:
            self.write_ok.set()

    def pause_writing(self) -> None:
        if self.write_ok is None:
            self.write_ok = asyncio.Event()
        self.write_ok.clear()

    def resume_writing(self) -> None:
        if self.write_ok is not None:
            self.write_ok.set()

    def data_received(self, data: bytes) -> None:
        if self.state <= KEEPALIVE:
            self.state = HEADERS
            self.since = self.loop.time()
            self.srv.busy(self)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(400, "protocol upgrade not supported")
        except httptools.HttpParserError as e:
            self.fail(400, f"malformed HTTP request: {e}")

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.t_first = time.monotonic()  # the request's arrival, for its deadline
        self.t_wait = self.srv.wait.estimate_s  # ... minus its estimated wait in the socket
        if self.state != HEADERS:
            self.state = HEADERS
            self.since = self.loop.time()
        self.url = b""
        self.headers = []
        self.body = []
        self.size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" and value.strip().isdigit():
            n = int(value)
            if n > self.srv.limits.max_body_bytes:
                cap = self.srv.limits.max_body_bytes
                self.fail(413, f"body of {n} bytes exceeds the cap of {cap} bytes")
                raise httptools.HttpParserError("body too large")  # stop parsing this data
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.state = BODY
        self.since = self.loop.time()
        self.t_headers = time.monotonic()
        expect = (b"expect", b"100-continue") in self.headers
        hook = self.srv.at_headers
        if hook is not None and self.transport is not None:
            raw_path, _q, path = self._path()
            try:
                early = hook({
                    "method": self.parser.get_method().decode("ascii"),
                    "path": path,
                    "headers": self.headers,
                    "state": {"tidal.t_first_byte": self.t_first,
                              "tidal.t_headers": self.t_headers,
                              "tidal.socket_wait_s": self.t_wait},
                })  # fmt: skip
            except Exception:  # a bug in the hook: the request takes the normal path
                log.exception("at_headers failed on %s", path)
                early = None
            if early is not None:
                self._answer_early(early, expect)
                return
        # Clients (curl above 1 KB) wait up to 1 s for this before sending the body.
        if self.transport is not None and expect:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _answer_early(
        self, early: tuple[int, list[tuple[bytes, bytes]], bytes], expect: bool
    ) -> None:
        status, headers, body = early
        keep = self.parser.should_keep_alive() and not self.srv.stopping and not expect
        data = _response_head(status, headers, len(body), not keep) + body
        self.discard = True
        if self.task is not None or self.pending:  # earlier answers first (pipelining)
            self.pending.append(_Request({}, b"", keep, data))
            return
        assert self.transport is not None
        self.transport.write(data)
        if expect:  # the client may never send the body: nothing left to frame
            self.close()
        elif not keep:
            self.close_after = True

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.srv.limits.max_body_bytes:
            self.fail(413, f"body exceeds the cap of {self.srv.limits.max_body_bytes} bytes")
            raise httptools.HttpParserError("body too large")
        if not self.discard:
            self.body.append(body)

    def _path(self) -> tuple[bytes, bytes, str]:
        url = self.url
        q = url.find(b"?")
        raw_path, query = (url, b"") if q < 0 else (url[:q], url[q + 1 :])
        path = raw_path.decode("latin-1")
        return raw_path, query, unquote(path) if "%" in path else path

    def on_message_complete(self) -> None:
        if self.discard:  # answered at the headers
            self.discard = False
            self.state = KEEPALIVE
            self.since = self.loop.time()
            if self.close_after:
                self.close()
            elif self.task is None and not self.pending:
                self.srv.idle(self)
            elif self.task is None:
                self.task = self.loop.create_task(self.run())
            return
        raw_path, query, path = self._path()
        p = self.parser
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": p.get_http_version(),
            "server": self.sockname,
            "client": self.client,
            "scheme": self.scheme,
            "method": p.get_method().decode("ascii"),
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self.headers,
            "state": {
                "tidal.t_first_byte": self.t_first,
                "tidal.t_headers": self.t_headers,
                "tidal.socket_wait_s": self.t_wait,
                "tidal.on_disconnect": self.on_disconnect,
            },
        }
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.pending.append(_Request(scope, body, p.should_keep_alive()))
        self.state = KEEPALIVE
        self.since = self.loop.time()
        if self.task is None:
            self.task = self.loop.create_task(self.run())
        elif len(self.pending) > MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()

    # -- running requests ------------------------------------------------------------------
    def on_disconnect(self, cb: Callable[[], None]) -> Callable[[], None]:
        """`cb()` once the connection is gone (tidal.dataplane.disconnect's hook); returns
        the unregister function. The same event `receive()` reports as `http.disconnect`."""
        if self.closed:
            self.loop.call_soon(cb)
            return _nothing
        if self.lost is None:
            self.lost = self.loop.create_future()
        lost = self.lost

        def fire(_f: asyncio.Future[None]) -> None:
            cb()

        lost.add_done_callback(fire)
        return partial(_unregister, lost, fire)

    async def run(self) -> None:
        """Answer pending requests in order, one app call at a time."""
        while self.pending and not self.closed:
            req = self.pending.pop(0)
            if len(self.pending) == MAX_PIPELINED and self.transport is not None:
                self.transport.resume_reading()
            keep = await self.call(req)
            if not keep:
                self.close()
                break
        self.task = None
        if not self.closed:
            self.since = self.loop.time()
            if self.state == KEEPALIVE and not self.pending:
                self.srv.idle(self)

    async def call(self, req: _Request) -> bool:
        """Run the app on one request; True when the connection stays open."""
        if req.answer is not None:  # answered at the headers (`_answer_early`)
            if not self.closed and self.transport is not None:
                self.transport.write(req.answer)
            return req.keep_alive
        direct = self.srv.direct
        if direct is not None:
            coro = direct(req.scope, req.body)
            if coro is not None:
                return await self._direct(req, coro)
        st = _Exchange(req.keep_alive and not self.srv.stopping)

        async def receive() -> dict[str, Any]:
            if not st.body_given:
                st.body_given = True
                return {"type": "http.request", "body": req.body, "more_body": False}
            if not self.closed and not st.done:
                if self.lost is None:
                    self.lost = self.loop.create_future()
                await self.lost
            return {"type": "http.disconnect"}

        async def send(msg: dict[str, Any]) -> None:
            if self.closed or st.done:
                return
            kind = msg["type"]
            if kind == "http.response.start":
                st.status = msg["status"]
                st.headers = list(msg.get("headers", ()))
                return
            if kind != "http.response.body":
                return
            if st.status == 0:
                raise RuntimeError("http.response.body before http.response.start")
            body: bytes = msg.get("body", b"")
            more: bool = msg.get("more_body", False)
            t = self.transport
            assert t is not None
            if st.headers is not None:
                t.write(st.head(body, more) + (_chunk(body) if st.chunked else body))
            elif body:
                t.write(_chunk(body) if st.chunked else body)
            if not more:
                if st.chunked:
                    t.write(b"0\r\n\r\n")
                st.done = True
            if self.write_ok is not None and not self.write_ok.is_set():
                await self.write_ok.wait()

        try:
            await self.srv.app(req.scope, receive, send)
        except Exception as e:  # a bug in the app must not take the server down
            log.exception("ASGI app failed on %s %s", req.scope["method"], req.scope["path"])
            if st.status == 0 and not self.closed and self.transport is not None:
                self.transport.write(_error(500, f"internal error: {e!r}"))
            return False
        if not st.done:
            if st.status == 0 and self.transport is not None and not self.closed:
                self.transport.write(_error(500, "the app sent no response"))
            return False
        return st.keep

    async def _direct(self, req: _Request, coro: Any) -> bool:
        """The app's direct answer (status, body, headers) to `req`, framed and written
        (the server docstring's direct path); True when the connection stays open."""
        keep = req.keep_alive and not self.srv.stopping
        try:
            status, body, headers = await coro
            data = _response_head(status, headers, len(body), not keep) + body
        except Exception as e:  # a bug in the app must not take the server down
            log.exception("direct app call failed on %s", req.scope["path"])
            if not self.closed and self.transport is not None:
                self.transport.write(_error(500, f"internal error: {e!r}"))
            return False
        if self.closed or self.transport is None:
            return False
        self.transport.write(data)
        if self.write_ok is not None and not self.write_ok.is_set():
            await self.write_ok.wait()
        return keep

    def fail(self, status: int, message: str) -> None:
        """Answer `status` (unless a response is in progress) and close."""
        if self.closed or self.transport is None:
            return
        if self.task is None:
            self.transport.write(_error(status, message))
        self.close()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()
            self.srv.forget(self)
