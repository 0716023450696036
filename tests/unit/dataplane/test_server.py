"""tidal.dataplane.server: keep-alive, pipelining, 413, header/body/idle timeouts, the
connection cap shedding idle connections first, disconnect events, TLS. Real sockets on
127.0.0.1 port 0; timeouts are small, assertions are about behaviour, not speed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tidal.dataplane.disconnect import ClientGone, disconnect_hook, until_disconnect
from tidal.dataplane.server import ServerLimits, raise_fd_limit, serve_async, ssl_context

DISCONNECTS: list[str] = []


def on_uvloop(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        uvloop.run(fn(*args, **kwargs))

    return run


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            kind = "complete" if msg["type"] == "lifespan.startup" else "shutdown"
            if kind == "complete":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    msg = await receive()
    if scope["path"] == "/wait-disconnect":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        nxt = await receive()
        DISCONNECTS.append(nxt["type"])
        return
    if scope["path"] == "/hook-disconnect":  # until_disconnect on the server's hook, no task
        hook = disconnect_hook(scope)
        assert hook is not None
        try:
            await until_disconnect(receive, asyncio.get_running_loop().create_future(), hook)
        except ClientGone:
            DISCONNECTS.append("hook")
        return
    if scope["path"] == "/chunked":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ab", "more_body": True})
        await send({"type": "http.response.body", "body": b"cd"})
        return
    body = b"%s %s %s" % (scope["method"].encode(), scope["raw_path"], msg["body"])
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def running(
    limits: ServerLimits, ctx: ssl.SSLContext | None = None, app: Any = echo_app,
    lifespan: bool = True,
) -> AsyncIterator[int]:  # fmt: skip
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve_async(
            app,
            "127.0.0.1",
            0,
            limits,
            ssl_ctx=ctx,
            stop=stop,
            on_started=lambda n: ready.set_result(n[0][1]),
            lifespan=lifespan,
        )  # fmt: skip
    )
    port = await asyncio.wait_for(ready, 10)
    try:
        yield port
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def read_response(r: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    hdrs = dict(ln.split(b": ", 1) for ln in lines[1:] if ln)
    if b"content-length" in hdrs:
        body = await r.readexactly(int(hdrs[b"content-length"]))
    else:
        body = b""
        while True:
            n = int((await r.readline()).strip(), 16)
            chunk = await r.readexactly(n + 2)
            if n == 0:
                break
            body += chunk[:-2]
    return status, hdrs, body


def req(path: str, body: bytes = b"", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            ).encode() + body  # fmt: skip


LIM = ServerLimits(header_timeout_s=0.3, body_timeout_s=0.3, idle_timeout_s=0.3,
                   keepalive_timeout_s=0.6, max_connections=64, max_body_bytes=1000)  # fmt: skip


@on_uvloop
async def test_keepalive_pipelining_and_chunked() -> None:
    async with running(LIM) as port:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(req("/a?q=1", b"one") + req("/b", b"two") + req("/c", b"three"))
        got = [await read_response(r) for _ in range(3)]
        assert [g[2] for g in got] == [b"POST /a one", b"POST /b two", b"POST /c three"]
        assert got[0][1][b"x-a"] == b"1"
        w.write(req("/chunked"))
        assert (await read_response(r))[2] == b"abcd"
        w.write(req("/last", b"z", "Connection: close\r\n"))
        s, h, b = await read_response(r)
        assert (s, b, h[b"connection"]) == (200, b"POST /last z", b"close")
        assert await asyncio.wait_for(r.read(), 5) == b""  # closed by the server
        w.close()


@on_uvloop
async def test_expect_100_continue_is_answered_before_the_body() -> None:
    async with running(LIM) as port:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert (
            await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        w.write(b"ok")
        assert (await read_response(r))[2] == b"POST /e ok"
        w.close()


@on_uvloop
async def test_body_cap_is_413_without_reading_the_body() -> None:
    async with running(LIM) as port:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n")
        status, _, body = await read_response(r)
        assert status == 413 and b"5000" in body
        w.close()


@pytest.mark.parametrize(
    "data",
    [b"POST /x HTTP/1.1\r\nHost: t\r\n", b"POST /x HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"],
    ids=["slow-headers", "short-body"],
)
@on_uvloop
async def test_stalled_request_gets_408_then_close(data: bytes) -> None:
    async with running(LIM) as port:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(data)
        status, hdrs, _ = await read_response(r)
        assert status == 408 and hdrs[b"connection"] == b"close"
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()


@on_uvloop
async def test_idle_before_first_request_and_keepalive_idle_are_closed() -> None:
    async with running(LIM) as port:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(r.read(), 5) == b""  # never sent a byte: closed
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(req("/a"))
        assert (await read_response(r2))[0] == 200
        assert await asyncio.wait_for(r2.read(), 5) == b""  # keep-alive idle: closed
        w.close()
        w2.close()


@on_uvloop
async def test_cap_sheds_the_oldest_idle_connection_for_a_new_client() -> None:
    lim = ServerLimits(max_connections=16, idle_timeout_s=30, keepalive_timeout_s=30)
    async with running(lim) as port:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(40)]
        await asyncio.sleep(0.2)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(req("/new", b"hi"))
        assert (await read_response(r))[2] == b"POST /new hi"
        closed = 0
        for ir, iw in idle:
            with contextlib.suppress(TimeoutError, ConnectionError):
                if await asyncio.wait_for(ir.read(), 0.5) == b"":
                    closed += 1
            iw.close()
        assert closed >= 40 + 1 - 16  # the oldest idle ones were shed
        w.close()


async def _disconnects() -> list[str]:
    """DISCONNECTS once the app recorded something (or after 2 s)."""
    for _ in range(100):
        if DISCONNECTS:
            break
        await asyncio.sleep(0.02)
    return DISCONNECTS


@on_uvloop
async def test_client_disconnect_reaches_the_app() -> None:
    DISCONNECTS.clear()
    async with running(LIM) as port:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(req("/wait-disconnect"))
        await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        w.close()
        assert await _disconnects() == ["http.disconnect"]


@on_uvloop
async def test_disconnect_hook_cancels_the_waiting_request() -> None:
    DISCONNECTS.clear()
    async with running(LIM) as port:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(req("/hook-disconnect"))
        await asyncio.sleep(0.1)  # the app is waiting on its (never done) work
        assert DISCONNECTS == []
        w.close()
        assert await _disconnects() == ["hook"]


@on_uvloop
async def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert), "-days", "1"],
        check=True, capture_output=True,
    )  # fmt: skip
    client = ssl.create_default_context(cafile=str(cert))
    client.check_hostname = False
    async with running(LIM, ssl_context(str(cert), str(key))) as port:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        w.write(req("/tls", b"s"))
        assert (await read_response(r))[2] == b"POST /tls s"
        w.close()


def test_raise_fd_limit_never_lowers() -> None:
    import resource

    before = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert raise_fd_limit() >= before


class _HookedApp:
    """echo_app with an `at_headers` hook: refuses /refuse, raises on /boom."""

    def at_headers(self, scope: dict[str, Any]) -> Any:
        if scope["path"] == "/boom":
            raise RuntimeError("bug in the hook")
        if scope["path"] == "/refuse":
            return 503, [(b"content-type", b"application/json")], b'{"error":"no"}'
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await echo_app(scope, receive, send)


@on_uvloop
async def test_at_headers_answers_before_the_body_and_a_failing_hook_is_ignored() -> None:
    async with running(LIM, app=_HookedApp()) as port:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"POST /refuse HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\n")
        assert (await read_response(r))[::2] == (503, b'{"error":"no"}')  # body not sent yet
        w.write(b"abc" + req("/boom", b"x") + req("/ok", b"y"))
        assert (await read_response(r))[2] == b"POST /boom x"  # the normal path
        assert (await read_response(r))[2] == b"POST /ok y"
        w.close()


class _DirectApp:
    """echo_app plus a direct path for /d* (and /boom: a direct call that fails)."""

    def __init__(self) -> None:
        self.direct_calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await echo_app(scope, receive, send)

    def direct(self, scope: dict[str, Any], body: bytes) -> Any:
        if not scope["path"].startswith(("/d", "/boom")):
            return None
        self.direct_calls += 1
        return self._answer(scope, body)

    async def _answer(self, scope: dict[str, Any], body: bytes) -> Any:
        await asyncio.sleep(0.01 if scope["path"] == "/d-slow" else 0)
        if scope["path"] == "/boom":
            raise RuntimeError("bug")
        assert callable(scope["state"]["tidal.on_disconnect"])  # the same scope as ASGI's
        return 201, b"D " + body, [(b"x-d", b"1")]


class _Wrapper:
    """A wrapper app passing everything to `oip_app` (as tidal.control's ClosedLoop does)."""

    def __init__(self, inner: _DirectApp) -> None:
        self.oip_app = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.oip_app(scope, receive, send)


@pytest.mark.parametrize("wrapped", [False, True])
@on_uvloop
async def test_direct_path_keeps_pipeline_order_keepalive_and_fails_closed(wrapped: bool) -> None:
    inner = _DirectApp()
    app: Any = _Wrapper(inner) if wrapped else inner
    async with running(LIM, app=app) as port:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(req("/d-slow", b"1") + req("/a", b"2") + req("/d", b"3"))
        got = [await read_response(r) for _ in range(3)]
        assert [(g[0], g[2]) for g in got] == [(201, b"D 1"), (200, b"POST /a 2"), (201, b"D 3")]
        assert got[0][1][b"x-d"] == b"1" and b"connection" not in got[0][1]
        w.write(req("/d", b"z", "Connection: close\r\n"))
        s, h, b = await read_response(r)
        assert (s, b, h[b"connection"]) == (201, b"D z", b"close")
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(req("/boom"))
        s, _, b = await read_response(r)
        assert s == 500 and b"internal error" in b
        assert await asyncio.wait_for(r.read(), 5) == b""  # a failed app call closes
        w.close()
    assert inner.direct_calls == 4
