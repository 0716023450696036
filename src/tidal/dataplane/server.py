"""The gateway's HTTP/1.1 server: an httptools parser on uvloop serving any ASGI 3 app.

Chosen by measurement over uvicorn+httptools and granian (RSGI and ASGI): same parser, less
work per request (docs/dataplane.md, "HTTP server layer"; `tidal bench http-layers`).

Contract:
- HTTP/1.1 keep-alive (HTTP/1.0 only with `Connection: keep-alive`) and pipelining: requests
  on one connection are answered in order, one app call at a time; reading pauses while more
  than `_MAX_PIPELINED` complete requests wait.
- The body is read whole before the app is called (`receive()` returns it in one
  `http.request` message); a `Content-Length` above `max_body_bytes` is answered 413 and the
  connection closed without reading the body. After the body, `receive()` waits for the client
  to go away and returns `http.disconnect` (the gateway cancels the request then).
- Admission at the headers: an app with an `at_headers(scope)` method (scope: method, path,
  headers, state) is asked once the request line and headers are parsed, before any body
  byte is read. When it returns a response `(status, headers, body)`, that is the request's
  answer: written at once when it is the connection's next answer (else in pipeline order),
  the app is not called, and the body is read and discarded (not buffered) so the
  connection stays usable (keep-alive as the request asked). With `Expect: 100-continue` no
  100 is sent and the connection closes after the answer (the client may skip the body).
- Timeouts (`ServerLimits`, from `ServeConfig.limits`), checked by one sweep per connection
  set, not per request: request line + headers within `header_timeout_s` from the request's
  first byte, else 408 and close; the body within `body_timeout_s` after the headers, else
  408 and close; a new connection that sends nothing for `idle_timeout_s` is closed; an idle
  keep-alive connection after `keepalive_timeout_s`.
- At most `max_connections` open connections. A new one over the cap first sheds the
  connection idle the longest (no request in progress); if none is idle, the newcomer gets
  503 and is closed. So a new client is served even while thousands of idle sockets are open.
- The descriptor limit is raised at start (`raise_fd_limit`) where allowed; the default cap
  is 90% of it.
- TLS when `ssl_certfile`/`ssl_keyfile` are given (an `ssl.SSLContext` on the listener).
- `scope["state"]["tidal.t_first_byte"]`: `time.monotonic()` when the request's first byte
  was parsed (its arrival: a large body's read and parse happen after it);
  `scope["state"]["tidal.on_disconnect"]`: the disconnect hook of tidal.dataplane.disconnect
  (the same event as `http.disconnect`, without a task per request);
  `scope["state"]["tidal.t_headers"]`: `time.monotonic()` when the headers were parsed.
- SIGINT/SIGTERM: stop accepting, close idle connections, let running requests finish (up to
  `shutdown_grace_s`), then the ASGI lifespan shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import ssl
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast
from urllib.parse import unquote

import httptools

from tidal.dataplane.disconnect import unregister as _unregister
from tidal.dataplane.http_wire import Exchange as _Exchange
from tidal.dataplane.http_wire import chunk as _chunk
from tidal.dataplane.http_wire import error as _error
from tidal.dataplane.http_wire import response_head as _response_head
from tidal.dataplane.lifespan import ASGI as _ASGI
from tidal.dataplane.lifespan import Lifespan

log = logging.getLogger("tidal.server")

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
_MAX_PIPELINED = 16
# States of the parser side of a connection.
_NEW, _KEEPALIVE, _HEADERS, _BODY = 0, 1, 2, 3


@dataclass(frozen=True)
class ServerLimits:
    """Connection limits (seconds, counts); see the module docstring."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 10.0
    keepalive_timeout_s: float = 5.0
    max_connections: int = 10_000
    max_body_bytes: int = 8 * 1024 * 1024
    shutdown_grace_s: float = 10.0


def raise_fd_limit(target: int | None = None) -> int:
    """Raise RLIMIT_NOFILE's soft limit to `target` (default: max(hard, 65536) when the
    process may raise the hard limit, else the hard limit); return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target or max(hard, 65536)
    for lim in ((want, max(want, hard)), (min(want, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, lim)
            return lim[0]
        except (ValueError, OSError):
            continue
    return soft


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


class _Conn(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(self, server: Server) -> None:
        self.srv = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.state = _NEW
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
        if self.state <= _KEEPALIVE:
            self.state = _HEADERS
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
        if self.state != _HEADERS:
            self.state = _HEADERS
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
        self.state = _BODY
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
                              "tidal.t_headers": self.t_headers},
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
            self.state = _KEEPALIVE
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
                "tidal.on_disconnect": self.on_disconnect,
            },
        }
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.pending.append(_Request(scope, body, p.should_keep_alive()))
        self.state = _KEEPALIVE
        self.since = self.loop.time()
        if self.task is None:
            self.task = self.loop.create_task(self.run())
        elif len(self.pending) > _MAX_PIPELINED and self.transport is not None:
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
            if len(self.pending) == _MAX_PIPELINED and self.transport is not None:
                self.transport.resume_reading()
            keep = await self.call(req)
            if not keep:
                self.close()
                break
        self.task = None
        if not self.closed:
            self.since = self.loop.time()
            if self.state == _KEEPALIVE and not self.pending:
                self.srv.idle(self)

    async def call(self, req: _Request) -> bool:
        """Run the app on one request; True when the connection stays open."""
        if req.answer is not None:  # answered at the headers (`_answer_early`)
            if not self.closed and self.transport is not None:
                self.transport.write(req.answer)
            return req.keep_alive
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


class Server:
    """Listens, tracks connections, enforces the limits (see the module docstring)."""

    def __init__(self, app: ASGIApp, limits: ServerLimits) -> None:
        self.app = app
        self.at_headers: Callable[[dict[str, Any]], Any] | None = getattr(app, "at_headers", None)
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self.conns: set[_Conn] = set()
        self.idle_conns: OrderedDict[_Conn, None] = OrderedDict()
        self.stopping = False
        self.shed = 0
        self.refused = 0
        self.timed_out = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.TimerHandle | None = None

    def admit(self, c: _Conn) -> bool:
        if self.stopping:
            return False
        if len(self.conns) >= self.limits.max_connections:
            if self.idle_conns:
                oldest, _ = self.idle_conns.popitem(last=False)
                self.shed += 1
                oldest.close()
            else:
                self.refused += 1
                return False
        self.conns.add(c)
        self.idle_conns[c] = None
        return True

    def forget(self, c: _Conn) -> None:
        self.conns.discard(c)
        self.idle_conns.pop(c, None)

    def busy(self, c: _Conn) -> None:
        self.idle_conns.pop(c, None)

    def idle(self, c: _Conn) -> None:
        self.idle_conns[c] = None

    def _sweep(self) -> None:
        now = self.loop.time()
        lim = self.limits
        for c in list(self.conns):
            age = now - c.since
            if c.state == _HEADERS and age > lim.header_timeout_s:
                self.timed_out += 1
                c.fail(408, f"request headers not received within {lim.header_timeout_s:g} s")
            elif c.state == _BODY and age > lim.body_timeout_s:
                self.timed_out += 1
                c.fail(408, f"request body not received within {lim.body_timeout_s:g} s")
            elif c.task is None and not c.pending:
                idle_for = lim.idle_timeout_s if c.state == _NEW else lim.keepalive_timeout_s
                if age > idle_for:
                    c.close()
        self._arm()

    def _arm(self) -> None:
        lim = self.limits
        shortest = min(lim.header_timeout_s, lim.body_timeout_s, lim.idle_timeout_s,
                       lim.keepalive_timeout_s)  # fmt: skip
        self._sweeper = self.loop.call_later(max(0.05, min(1.0, shortest / 4)), self._sweep)

    async def listen(self, host: str, port: int, ssl_ctx: ssl.SSLContext | None = None,
                     sock: Any = None) -> list[Any]:  # fmt: skip
        """Start listening; return the bound socket names."""
        if sock is not None:
            s = await self.loop.create_server(lambda: _Conn(self), sock=sock, ssl=ssl_ctx,
                                              backlog=4096)  # fmt: skip
        else:
            s = await self.loop.create_server(lambda: _Conn(self), host, port, ssl=ssl_ctx,
                                              backlog=4096, reuse_address=True)  # fmt: skip
        self._servers.append(s)
        if self._sweeper is None:
            self._arm()
        return [x.getsockname() for x in s.sockets]

    async def shutdown(self) -> None:
        """Stop accepting, close idle connections, wait for running requests (bounded)."""
        self.stopping = True
        for s in self._servers:
            s.close()
        for c in list(self.conns):
            if c.task is None and not c.pending:
                c.close()
        t_end = self.loop.time() + self.limits.shutdown_grace_s
        while any(c.task is not None for c in self.conns) and self.loop.time() < t_end:
            await asyncio.sleep(0.05)
        for c in list(self.conns):
            c.close()
        if self._sweeper is not None:
            self._sweeper.cancel()


def ssl_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


async def serve_async(
    app: ASGIApp,
    host: str,
    port: int,
    limits: ServerLimits,
    *,
    ssl_ctx: ssl.SSLContext | None = None,
    on_started: Callable[[list[Any]], Any] | None = None,
    stop: asyncio.Event | None = None,
    lifespan: bool = True,
    sock: Any = None,
) -> None:
    """Run the lifespan startup, listen (on `sock`, a listening socket, when given; else on
    `host`:`port`), call `on_started(socknames)`, serve until `stop` is set (or SIGINT/SIGTERM),
    then shut down cleanly."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    life = Lifespan(app) if lifespan else None
    if life is not None:
        await life.startup()
    server = Server(app, limits)
    try:
        names = await server.listen(host, port, ssl_ctx, sock=sock)
        if on_started is not None:
            out = on_started(names)
            if asyncio.iscoroutine(out):
                await out
        await stop.wait()
    finally:
        await server.shutdown()
        if life is not None:
            await life.shutdown()


def limits_from_config(config: Any, fd_soft: int) -> ServerLimits:
    """ServerLimits from a ServeConfig (its `limits` section and `max_body_bytes`)."""
    lim = getattr(config, "limits", None)
    cap = getattr(lim, "max_connections", None) or max(16, int(fd_soft * 0.9))

    def g(name: str, default: float) -> float:
        return float(getattr(lim, name, default) or default)

    return ServerLimits(
        header_timeout_s=g("header_timeout_s", 10.0),
        body_timeout_s=g("body_timeout_s", 30.0),
        idle_timeout_s=g("idle_timeout_s", 10.0),
        keepalive_timeout_s=g("keepalive_timeout_s", 5.0),
        max_connections=int(cap),
        max_body_bytes=int(getattr(config, "max_body_bytes", 8 * 1024 * 1024)),
    )


def prepare(config: Any, log_level: str = "warning") -> ServerLimits:
    """What every way of serving `config` does first: the log level, the bind checks
    (non-loopback without a token is refused, without TLS warned), the descriptor limit
    raised; returns the connection limits."""
    from tidal.dataplane.security import check_bind  # the hardening issue's bind rules

    logging.getLogger("tidal.server").setLevel(log_level.upper())
    certfile = getattr(config, "tls_certfile", None)
    token = config.admin_token() if hasattr(config, "admin_token") else None
    for w in check_bind(config.host, token, tls=bool(certfile)):
        log.warning("%s", w)
        print(f"warning: {w}", file=sys.stderr)
    lim = getattr(config, "limits", None)
    soft = raise_fd_limit(getattr(lim, "fd_limit", None))
    return limits_from_config(config, soft)


def serve(
    app: ASGIApp,
    config: Any,
    on_start: Callable[[], Any] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve `app` per `config` (a ServeConfig: host, port, limits, TLS) until SIGINT/SIGTERM,
    HTTP in this process (`frontends: N` > 1 is `tidal.dataplane.frontend.serve`).
    `on_start()` runs on the server's loop once the lifespan startup is complete and the
    socket listens (it may return a coroutine). Non-loopback binds are checked first."""
    import uvloop

    limits = prepare(config, log_level)
    if os.environ.get("TIDAL_HTTP_SERVER") == "uvicorn":  # the previous layer, for A/B runs
        from tidal.dataplane.lifespan import serve_uvicorn

        serve_uvicorn(app, config, limits, on_start, log_level)
        return
    certfile = getattr(config, "tls_certfile", None)
    keyfile = getattr(config, "tls_keyfile", None)
    ctx = ssl_context(certfile, keyfile) if certfile and keyfile else None

    def started(_names: list[Any]) -> Any:
        return on_start() if on_start is not None else None

    uvloop.run(serve_async(app, config.host, config.port, limits, ssl_ctx=ctx,
                           on_started=started))  # fmt: skip


__all__ = [
    "Lifespan",
    "Server",
    "ServerLimits",
    "limits_from_config",
    "prepare",
    "raise_fd_limit",
    "serve",
    "serve_async",
    "ssl_context",
]
