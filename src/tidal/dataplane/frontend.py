"""Several HTTP front-end processes in front of one scheduler process (`frontends: N`).

With `ServeConfig.frontends` = N > 1 (`tidal serve --frontends N`), `tidal.dataplane.server.serve`
runs this instead of serving HTTP on its own loop:

- the scheduler process (this one) runs the ASGI app (OIPApp: the Gateway, its stages, EDF
  queues, admission, batching and workers) and its lifespan, exactly as with one process, and
  listens on a private Unix socket (the *ingress*, in a mode-0700 temporary directory);
- N front-end processes (`python -m tidal.dataplane.frontend`) serve HTTP/1.1 with Tidal's
  server (`tidal.dataplane.server`: keep-alive, pipelining, the 408/idle/keep-alive timeouts,
  the connection cap that sheds idle connections first, the body size cap, TLS). Each accepts
  on its own listening socket bound to the same address with SO_REUSEPORT, so the kernel
  spreads connections over them; the sockets are created by the scheduler process and handed
  to the children, so port 0 works and a replacement front end takes over its predecessor's
  socket (connections still in its accept queue are then served, not reset);
- an infer request of a served model (`POST /v2/models/{m}/infer`, no version, no
  Content-Encoding) takes the compact path (`tidal.dataplane.frontend_infer`): the front end
  checks and decodes it with the scheduler process's own code and sends only the model, the
  SLO, the arrival times and the input tensors; the scheduler runs it through the gateway
  and sends back the output tensors and the run's summary, from which the front end encodes
  the HTTP answer (refusals and errors come back as complete answers). So the scheduler
  process does no HTTP or JSON work for it. The front end learns the served models from the
  catalog the scheduler sends when it connects (and again when the model set changes);
- every other request is forwarded whole (method, path, query, headers, first-byte time,
  body) and answered by the ASGI app in the scheduler process; an infer request outside the
  compact path with JSON float tensors is forwarded in the binary tensor extension
  (`tidal.dataplane.frontend_codec`); a client that disconnects first is forwarded as a
  cancel, which the ingress turns into the ASGI `http.disconnect` the app already handles,
  or, on the compact path, into the cancel of the request's task (either way the request
  leaves its queue or its batch's answers, counted cancelled).

So there is one EDF queue and one admission per stage, whatever N is: the front ends do
HTTP (parsing, connection handling, response framing) and the JSON work. A front
end that exits is reported (logged with its exit status) and replaced after a short back-off
(`tidal.dataplane.frontend_procs`); the children's environment has no credential-like
variables (`tidal.dataplane.security.child_env`): tokens are checked in the scheduler process
only.

Wire format on the ingress socket (no pickle): frames `<IBQ` (payload length, kind, request
id) + payload. REQ payload: `<II` (meta length, headers length), meta (orjson: method, path,
raw path, query, HTTP version, scheme, client, server, first-byte time), headers as
`name:value\\r\\n` lines, then the body. RESP payload: `<HI` (status, headers length), headers,
body. CANCEL has no payload. HELLO, INFER, RESULT and RETRY: `tidal.dataplane.frontend_infer`.
Request ids are per front end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

from tidal.dataplane.disconnect import ClientGone, disconnect_hook, until_disconnect
from tidal.dataplane.disconnect import unregister as _unregister
from tidal.dataplane.frontend_codec import json_to_binary
from tidal.dataplane.frontend_infer import (
    HELLO,
    INFER,
    RESP,
    RESP_HEAD,
    RESULT,
    RETRY,
    Catalog,
    CompactInfer,
    Prepared,
    compact_sig,
    headers_blob,
    infer_parts,
    oip_app_of,
    parse_headers,
    parse_resp,
    resp_parts,
    result_answer,
)
from tidal.dataplane.frontend_infer import prepare as prepare_infer
from tidal.dataplane.frontend_procs import FrontEnds, listen_sockets
from tidal.dataplane.infer_rest import error_answer, internal_answer, with_content_type
from tidal.dataplane.lifespan import ASGIApp, Lifespan
from tidal.dataplane.oip import OIPError
from tidal.dataplane.server import ServerLimits, prepare, serve_async, ssl_context
from tidal.dataplane.server import serve as serve_one

log = logging.getLogger("tidal.frontend")

_FRAME = struct.Struct("<IBQ")
_REQ_HEAD = struct.Struct("<II")
REQ, CANCEL = 1, 3  # RESP = 2, HELLO, INFER, RESULT, RETRY: tidal.dataplane.frontend_infer
MAX_FRAME = 1 << 31
READY_TIMEOUT_S = 60.0


class _Framed(asyncio.Protocol):
    """Frames over one stream; writes made in one loop iteration leave in one syscall."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.out: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, n = 0, len(buf)
        while n - pos >= _FRAME.size:
            size, kind, rid = _FRAME.unpack_from(buf, pos)
            end = pos + _FRAME.size + size
            if size > MAX_FRAME:
                self.fail(f"frame of {size} bytes")
                return
            if end > n:
                break
            self.on_frame(kind, rid, memoryview(buf)[pos + _FRAME.size : end].tobytes())
            pos = end
        if pos:
            del buf[:pos]

    def on_frame(self, kind: int, rid: int, payload: bytes) -> None:
        raise NotImplementedError

    def write_frame(self, kind: int, rid: int, *parts: bytes) -> None:
        if self.closed or self.transport is None:
            return
        if not self.out:
            asyncio.get_running_loop().call_soon(self._flush)
        self.out.append(_FRAME.pack(sum(len(p) for p in parts), kind, rid))
        self.out.extend(parts)

    def _flush(self) -> None:
        if self.out and self.transport is not None and not self.closed:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def fail(self, why: str) -> None:
        log.error("ingress stream broken (%s); closing it", why)
        if self.transport is not None:
            self.transport.close()


# ---------------------------------------------------------------------- scheduler side
class _IngressConn(_Framed):
    """One front end, seen from the scheduler process: runs the app on its requests."""

    def __init__(self, app: ASGIApp, conns: set[_IngressConn]) -> None:
        super().__init__()
        self.app = app
        self.conns = conns
        self.lost: dict[int, asyncio.Future[None]] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.infers: dict[int, asyncio.Task[None]] = {}  # compact INFER requests
        oip = oip_app_of(app)  # the compact path runs on the OIP app's gateway
        self.compact = CompactInfer(oip) if oip is not None else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.conns.add(self)
        if self.compact is not None:
            self.write_frame(HELLO, 0, self.compact.hello())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.conns.discard(self)
        for fut in self.lost.values():  # every client of a dead front end is gone
            if not fut.done():
                fut.set_result(None)
        for task in list(self.infers.values()):
            task.cancel()

    def on_frame(self, kind: int, rid: int, payload: bytes) -> None:
        if kind == INFER and self.compact is not None:
            self.infers[rid] = asyncio.get_running_loop().create_task(self._infer(rid, payload))
            return
        if kind == CANCEL:
            if rid in self.tasks:  # the app may not be waiting for the disconnect yet
                fut = self._lost(rid)
                if not fut.done():
                    fut.set_result(None)
            elif rid in self.infers:
                self.infers[rid].cancel()
            return
        if kind != REQ:
            self.fail(f"unexpected frame kind {kind}")
            return
        mlen, hlen = _REQ_HEAD.unpack_from(payload, 0)
        o = _REQ_HEAD.size
        meta = orjson.loads(payload[o : o + mlen])
        if self.compact is not None and meta["p"].endswith("/infer") and self.compact.stale():
            self.write_frame(HELLO, 0, self.compact.hello())  # a model loaded or unloaded
        headers = parse_headers(payload[o + mlen : o + mlen + hlen])
        body = payload[o + mlen + hlen :]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": meta["v"],
            "server": tuple(meta["sv"]) if meta["sv"] else None,
            "client": tuple(meta["c"]) if meta["c"] else None,
            "scheme": meta["s"],
            "method": meta["m"],
            "root_path": "",
            "path": meta["p"],
            "raw_path": meta["rp"].encode("latin-1"),
            "query_string": meta["q"].encode("latin-1"),
            "headers": headers,
            "state": {"tidal.t_first_byte": meta["t"], "tidal.on_disconnect": self._hook(rid)},
        }
        task = asyncio.get_running_loop().create_task(self._run(rid, scope, body))
        self.tasks[rid] = task

    async def _infer(self, rid: int, payload: bytes) -> None:
        """A compact request (tidal.dataplane.frontend_infer): its answer frame, or nothing
        when its front end cancelled it (the client is gone)."""
        assert self.compact is not None
        try:
            kind, parts = await self.compact.run(payload)
        except asyncio.CancelledError:
            return
        except Exception as e:  # a bug must not take the ingress down: 500, as OIPApp
            log.exception("compact infer failed")
            kind, parts = resp_parts(internal_answer(e))
        finally:
            self.infers.pop(rid, None)
        if kind == RETRY:  # the model changed since the catalog: a fresh one first
            self.write_frame(HELLO, 0, self.compact.hello())
        self.write_frame(kind, rid, *parts)

    def _lost(self, rid: int) -> asyncio.Future[None]:
        fut = self.lost.get(rid)
        if fut is None:
            fut = self.lost[rid] = asyncio.get_running_loop().create_future()
            if self.closed:
                fut.set_result(None)
        return fut

    def _hook(self, rid: int) -> Callable[[Callable[[], None]], Callable[[], None]]:
        """The `tidal.on_disconnect` hook of request `rid` (its front end's CANCEL)."""

        def on_disconnect(cb: Callable[[], None]) -> Callable[[], None]:
            fut = self._lost(rid)

            def fire(_f: asyncio.Future[None]) -> None:
                cb()

            fut.add_done_callback(fire)
            return partial(_unregister, fut, fire)

        return on_disconnect

    async def _run(self, rid: int, scope: dict[str, Any], body: bytes) -> None:
        given = False
        status = 0
        headers: list[tuple[bytes, bytes]] = []
        parts: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self._lost(rid)
            return {"type": "http.disconnect"}

        async def send(msg: dict[str, Any]) -> None:
            nonlocal status, headers
            if msg["type"] == "http.response.start":
                status = int(msg["status"])
                headers = list(msg.get("headers", ()))
            elif msg["type"] == "http.response.body":
                parts.append(msg.get("body", b""))

        try:
            await self.app(scope, receive, send)
        except Exception as e:  # a bug in the app must not take the ingress down
            log.exception("ASGI app failed on %s %s", scope["method"], scope["path"])
            status, headers = 500, [(b"content-type", b"application/json")]
            parts = [orjson.dumps({"error": f"internal error: {e!r}"})]
        finally:
            self.tasks.pop(rid, None)
            self.lost.pop(rid, None)
        if status == 0:
            status, headers = 500, [(b"content-type", b"application/json")]
            parts = [b'{"error":"the app sent no response"}']
        hb = headers_blob(headers)
        self.write_frame(RESP, rid, RESP_HEAD.pack(status, len(hb)), hb, *parts)


async def serve_frontends(
    app: ASGIApp,
    config: Any,
    limits: ServerLimits,
    n: int,
    *,
    on_started: Callable[[], Any] | None = None,
    stop: asyncio.Event | None = None,
    log_level: str = "warning",
    state: dict[str, Any] | None = None,
) -> None:
    """The scheduler process of `frontends: n` (see the module docstring): lifespan startup,
    ingress, `n` front ends on `config.host`:`config.port`, then `on_started()` once every
    front end is connected; serve until `stop` (or SIGINT/SIGTERM); shut down in order (front
    ends first, so their running requests are answered). `state` (tests) receives the bound
    port and the `FrontEnds`."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    life = Lifespan(app)
    await life.startup()
    tmp = tempfile.mkdtemp(prefix="tidal-ingress-")  # mode 0700: only this user connects
    path = os.path.join(tmp, "ingress.sock")
    conns: set[_IngressConn] = set()
    server = await loop.create_unix_server(lambda: _IngressConn(app, conns), path)
    os.chmod(path, 0o600)
    fes: FrontEnds | None = None
    try:
        socks = listen_sockets(config.host, config.port, n)
        port = socks[0].getsockname()[1]
        fes = FrontEnds(socks, path, limits, getattr(config, "tls_certfile", None),
                        getattr(config, "tls_keyfile", None), log_level)  # fmt: skip
        if state is not None:
            state.update(port=port, frontends=fes, ingress=conns)
        fes.start()
        t_end = loop.time() + READY_TIMEOUT_S
        while len(conns) < n and loop.time() < t_end and not stop.is_set():
            await asyncio.sleep(0.02)
        if len(conns) < n:
            log.warning("only %d of %d front ends connected after %.0f s", len(conns), n,
                        READY_TIMEOUT_S)  # fmt: skip
        if on_started is not None:
            out = on_started()
            if asyncio.iscoroutine(out):
                await out
        await stop.wait()
    finally:
        if fes is not None:
            await fes.stop(limits.shutdown_grace_s)
        server.close()
        for c in list(conns):
            if c.transport is not None:
                c.transport.close()
        shutil.rmtree(tmp, ignore_errors=True)
        await life.shutdown()


def serve(
    app: ASGIApp,
    config: Any,
    on_start: Callable[[], Any] | None = None,
    log_level: str = "warning",
) -> None:
    """`tidal.dataplane.server.serve` for any `config.frontends`: HTTP in this process for 1,
    else N front ends and this process as the scheduler (`serve_frontends`)."""
    n = int(getattr(config, "frontends", 1) or 1)
    started = partial(_freeze_then, on_start)
    if n <= 1:
        serve_one(app, config, started, log_level)
        return
    import uvloop

    limits = prepare(config, log_level)
    uvloop.run(serve_frontends(app, config, limits, n, on_started=started, log_level=log_level))


def _freeze_then(on_start: Callable[[], Any] | None, *_: Any) -> Any:
    """Once a serving process is up: `gc.freeze()` (the start-up heap, ~90k objects of
    imports and the loaded gateway, leaves the cyclic collector's view: a full collection
    while serving then scans only the objects made since, measured 0.5 ms instead of 60-70 ms
    of stalled requests), then `on_start()`. Only processes that serve until they exit call
    it (never a test's in-process server), so nothing that is frozen had to be collected."""
    gc.freeze()
    return on_start() if on_start is not None else None


# ---------------------------------------------------------------------- front-end side
class _Upstream(_Framed):
    """A front end's connection to the ingress: requests out, answers back by id."""

    def __init__(self, on_lost: Callable[[], None]) -> None:
        super().__init__()
        self.pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}  # (kind, payload)
        self.next_id = 0
        self.on_lost = on_lost
        self.catalog: Catalog | None = None  # the compact path's, once the scheduler sent it

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("scheduler process gone"))
        self.pending.clear()
        self.on_lost()

    def on_frame(self, kind: int, rid: int, payload: bytes) -> None:
        if kind == HELLO:
            self.catalog = Catalog.decode(payload)
            return
        fut = self.pending.pop(rid, None)
        if kind not in (RESP, RESULT, RETRY) or fut is None or fut.done():
            return
        fut.set_result((kind, payload))

    def _new(self) -> tuple[int, asyncio.Future[Any]]:
        self.next_id += 1
        rid = self.next_id
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.closed:
            fut.set_exception(ConnectionError("scheduler process gone"))
        else:
            self.pending[rid] = fut
        return rid, fut

    def infer(self, p: Prepared, scope: dict[str, Any]) -> tuple[int, asyncio.Future[Any]]:
        """A compact request (tidal.dataplane.frontend_infer); the future gets (kind, payload)."""
        rid, fut = self._new()
        if not self.closed:
            st = scope["state"]
            self.write_frame(INFER, rid, *infer_parts(p, st["tidal.t_first_byte"],
                                                      st.get("tidal.t_headers", 0.0)))  # fmt: skip
        return rid, fut

    def request(self, scope: dict[str, Any], body: bytes) -> tuple[int, asyncio.Future[Any]]:
        """A whole request; the future gets (kind, payload)."""
        rid, fut = self._new()
        if self.closed:
            return rid, fut
        meta = orjson.dumps({
            "m": scope["method"], "p": scope["path"],
            "rp": scope["raw_path"].decode("latin-1"),
            "q": scope["query_string"].decode("latin-1"), "v": scope["http_version"],
            "s": scope["scheme"], "c": scope["client"], "sv": scope["server"],
            "t": scope["state"]["tidal.t_first_byte"],
        })  # fmt: skip
        hb = headers_blob(scope["headers"])
        self.write_frame(REQ, rid, _REQ_HEAD.pack(len(meta), len(hb)), meta, hb, body)
        return rid, fut

    def cancel(self, rid: int) -> None:
        if self.pending.pop(rid, None) is not None:
            self.write_frame(CANCEL, rid)


class ForwardApp:
    """The front end's ASGI app: every HTTP request goes to the scheduler process."""

    def __init__(self, ingress: str, stop: asyncio.Event, cap: int = 8 << 20) -> None:
        """`cap`: the body cap (bytes) the scheduler applies to what it is sent."""
        self.ingress = ingress
        self.cap = cap
        self.stop = stop
        self.up: _Upstream | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    loop = asyncio.get_running_loop()
                    _, self.up = await loop.create_unix_connection(
                        lambda: _Upstream(self.stop.set), self.ingress
                    )
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http" or self.up is None:
            return
        msg = await receive()  # tidal.dataplane.server gives the whole body in one message
        body = msg.get("body", b"") if msg["type"] == "http.request" else b""
        up = self.up
        cat = up.catalog
        sig = compact_sig(scope, cat) if cat is not None else None
        if cat is not None and sig is not None:  # checked and decoded here (frontend_infer)
            try:
                p = prepare_infer(scope, body, sig, cat)
            except OIPError as e:
                await _send(send, *error_answer(e))
                return
            except Exception as e:  # a bug must not take the front end down: 500, as OIPApp
                log.exception("infer request check failed on %s", scope["path"])
                await _send(send, *internal_answer(e))
                return
            got = await self._wait(up, *up.infer(p, scope), receive, scope)
            if got is None:
                return
            kind, payload = got
            if kind == RESULT:
                await _send(send, *result_answer(p, payload, cat))
                return
            if kind == RESP:
                status, headers, out = parse_resp(payload)
                await _send(send, status, out, headers)
                return  # else RETRY: the model changed, the whole request is forwarded
        if scope["method"] == "POST" and scope["path"].endswith("/infer"):
            scope, body = _binary_tensors(scope, body, self.cap)
        got = await self._wait(up, *up.request(scope, body), receive, scope)
        if got is not None:
            status, headers, out = parse_resp(got[1])
            await _send(send, status, out, headers)

    async def _wait(
        self, up: _Upstream, rid: int, fut: asyncio.Future[Any], receive: Any, scope: Any
    ) -> tuple[int, bytes] | None:
        """The answer frame (kind, payload); None when the client left (the scheduler is
        told, the request leaves its queue). A scheduler that is gone answers 503."""
        try:
            got: tuple[int, bytes] = await until_disconnect(receive, fut, disconnect_hook(scope))
        except ClientGone:
            up.cancel(rid)
            return None
        except ConnectionError:
            kind, parts = resp_parts((503, b'{"error":"the scheduler process is gone"}', []))
            return kind, b"".join(parts)
        return got


async def _send(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = with_content_type(headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _binary_tensors(scope: dict[str, Any], body: bytes, cap: int) -> tuple[dict[str, Any], bytes]:
    """An infer request with JSON float tensors, re-encoded in the binary tensor extension
    (tidal.dataplane.frontend_codec), so the scheduler process does not parse the numbers;
    anything else unchanged."""
    hdrs = scope["headers"]
    for k, _ in hdrs:
        if k in (b"inference-header-content-length", b"content-encoding"):
            return scope, body
    got = json_to_binary(body, cap)
    if got is None:
        return scope, body
    out, hlen = got
    headers = [(k, v) for k, v in hdrs if k != b"content-length"]
    headers += [(b"content-length", b"%d" % len(out)),
                (b"inference-header-content-length", b"%d" % hlen)]  # fmt: skip
    return {**scope, "headers": headers}, out


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="A Tidal HTTP front end (started by tidal serve).")
    ap.add_argument("--ingress", required=True)
    ap.add_argument("--listen-fd", type=int, required=True)
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--limits", required=True, help="ServerLimits as JSON")
    ap.add_argument("--certfile")
    ap.add_argument("--keyfile")
    ap.add_argument("--log-level", default="warning")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    import uvloop

    limits = ServerLimits(**orjson.loads(args.limits))
    sock = socket.socket(fileno=args.listen_fd)
    ctx = ssl_context(args.certfile, args.keyfile) if args.certfile and args.keyfile else None

    async def run() -> None:
        stop = asyncio.Event()
        app = ForwardApp(args.ingress, stop, limits.max_body_bytes)
        await serve_async(app, "", 0, limits, ssl_ctx=ctx, stop=stop, sock=sock,
                          on_started=partial(_freeze_then, None))  # fmt: skip

    uvloop.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(_main())
