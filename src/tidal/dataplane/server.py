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
- The direct path: an app with a `direct(scope, body)` method (or a wrapper whose `oip_app`
  has one, for the routes the wrapper passes through unchanged) is asked first for each
  request; a coroutine it returns answers (status, body, headers) and the ASGI call is
  skipped (no `receive`/`send` messages: the OIP infer route, `tidal.dataplane.http.OIPApp`);
  None means the ASGI call. The same scope, pipelining order, keep-alive and disconnect hook.
- `scope["state"]["tidal.t_first_byte"]`: `time.monotonic()` when the request's first byte
  was parsed (its arrival: a large body's read and parse happen after it);
  `scope["state"]["tidal.on_disconnect"]`: the disconnect hook of tidal.dataplane.disconnect
  (the same event as `http.disconnect`, without a task per request);
  `scope["state"]["tidal.t_headers"]`: `time.monotonic()` when the headers were parsed;
  `scope["state"]["tidal.socket_wait_s"]`: how long the first byte is estimated to have
  waited in the socket before the loop read it (`tidal.dataplane.looplag.LoopWait`, online:
  a high quantile of the loop's recent lateness), so the request's arrival is estimated as
  `t_first_byte - socket_wait_s`.
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
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tidal.dataplane.http_conn import BODY as _BODY
from tidal.dataplane.http_conn import HEADERS as _HEADERS
from tidal.dataplane.http_conn import NEW as _NEW
from tidal.dataplane.http_conn import Conn as _Conn
from tidal.dataplane.lifespan import Lifespan
from tidal.dataplane.looplag import LoopWait

log = logging.getLogger("tidal.server")

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


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


class Server:
    """Listens, tracks connections, enforces the limits (see the module docstring)."""

    def __init__(self, app: ASGIApp, limits: ServerLimits) -> None:
        self.app = app
        self.at_headers: Callable[[dict[str, Any]], Any] | None = getattr(app, "at_headers", None)
        # The direct path (issue 14): the app's, or that of the OIP app a wrapper passes the
        # infer route through to unchanged (`tidal.control.closedloop.ClosedLoop.oip_app`).
        direct = getattr(app, "direct", None) or getattr(getattr(app, "oip_app", None),
                                                         "direct", None)  # fmt: skip
        self.direct: Callable[[dict[str, Any], bytes], Any] | None = (
            direct if callable(direct) else None
        )
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
        self.wait = LoopWait(self.loop)  # the socket wait before a request is read

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
        self.wait.start()
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
        self.wait.stop()


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
