"""Admission at the headers (tidal.dataplane.server's `at_headers` hook, OIPApp.at_headers):
on a busy lane, a request whose header deadline cannot be met is answered 503 before any
body byte is sent; its body is then read and dropped and the connection keeps serving, in
pipeline order; `Expect: 100-continue` gets the 503 instead of a 100, then a close; a body's
SLO alone never refuses at the headers (the body stage does, after reading it). The SLO
precedence (the tighter of body and header) and the row bound from the binary extension's
lengths. Real sockets on 127.0.0.1 port 0; assertions on behaviour and counts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from dataplane_fakes import FakeFactory
from test_server import on_uvloop, read_response, running

from tidal.config.serve import parse_serve_config
from tidal.core.tensors import TensorMeta
from tidal.dataplane.early import row_bytes, rows_at_least, slo_hint
from tidal.dataplane.gateway import Gateway
from tidal.dataplane.http import OIPApp
from tidal.dataplane.server import ServerLimits

CFG = {"models": [{"name": "digits", "variants": ["digits-mlp"]}], "default_slo_ms": 5000,
       "grpc": False}  # fmt: skip
URL = "/v2/models/digits/infer"
ONE = {"inputs": [{"name": "input-0", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
LIM = ServerLimits(header_timeout_s=5, body_timeout_s=5, idle_timeout_s=5, keepalive_timeout_s=5,
                   max_connections=64, max_body_bytes=1 << 20)  # fmt: skip


def head(length: int, extra: str = "") -> bytes:
    return (f"POST {URL} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()  # fmt: skip


def infer(body: bytes, extra: str = "") -> bytes:
    return head(len(body), extra) + body


LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n"


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[tuple[int, Gateway, OIPApp]]:
    fac = FakeFactory(base=0.3, per_item=0.0)  # a batch takes 300 ms
    gw = Gateway(parse_serve_config(CFG), factory=fac, fits={"digits-mlp": fac.fit()})
    await gw.start()
    app = OIPApp(gw)
    try:
        async with running(LIM, app=app, lifespan=False) as port:
            yield port, gw, app
    finally:
        await gw.stop()


async def busy(port: int, gw: Gateway) -> Any:
    """One request that keeps the lane busy for a batch; returns its pending answer."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(infer(orjson.dumps(ONE)))
    while not gw.stages["digits"].pressured():
        await asyncio.sleep(0.005)

    async def answer() -> int:
        status = (await read_response(r))[0]
        w.close()
        return status

    return asyncio.ensure_future(answer())


@on_uvloop
async def test_a_header_deadline_is_refused_before_the_body_and_the_connection_lives() -> None:
    async with serving() as (port, gw, app):
        first = await busy(port, gw)
        body = orjson.dumps(ONE)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(head(len(body), "x-tidal-slo-ms: 50\r\n"))  # no body byte yet
        status, hdrs, doc = await read_response(r)
        assert status == 503 and orjson.loads(doc)["cause"] == "refused", doc
        assert hdrs[b"retry-after"] == b"1" and b"connection" not in hdrs  # keep-alive
        w.write(body + LIVE)  # the body is read and dropped; the next request is served
        assert (await read_response(r))[:3:2] == (200, b'{"live":true}')
        # a body's SLO alone is not refused at the headers: the body stage refuses it
        body50 = orjson.dumps({**ONE, "parameters": {"slo_ms": 50}})
        w.write(infer(body50) + LIVE)
        assert (await read_response(r))[0] == 503
        assert (await read_response(r))[0] == 200
        assert await first == 200
        w.close()
        counts = app.refusals.summary()["counts"]
        assert counts == {"headers": 1, "body": 1, "admission": 0}, counts
        c = gw.stages["digits"].counters
        assert c.violations["refused"] == 2 and c.arrivals == 3


@on_uvloop
async def test_pipelined_answers_keep_their_order_and_expect_gets_503_then_close() -> None:
    async with serving() as (port, gw, app):
        first = await busy(port, gw)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        # admitted (queued behind the busy batch), then refused at the headers: in order
        w.write(infer(orjson.dumps(ONE)) + infer(orjson.dumps(ONE), "x-tidal-slo-ms: 50\r\n")
                + LIVE)  # fmt: skip
        got = [(await read_response(r))[0] for _ in range(3)]
        assert got == [200, 503, 200], got
        assert await first == 200
        first = await busy(port, gw)
        w.write(head(300, "x-tidal-slo-ms: 50\r\nExpect: 100-continue\r\n"))
        status, hdrs, _ = await read_response(r)  # the 503 instead of the 100
        assert status == 503 and hdrs[b"connection"] == b"close"
        assert await asyncio.wait_for(r.read(), 5) == b""  # then closed
        w.close()
        assert await first == 200
        first = await busy(port, gw)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        body = orjson.dumps(ONE)
        w.write(head(len(body), "x-tidal-slo-ms: 50\r\nConnection: close\r\n"))
        status, hdrs, _ = await read_response(r)  # answered before the body ...
        assert status == 503 and hdrs[b"connection"] == b"close"
        w.write(body)  # ... which is read, then the connection closes
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
        assert await first == 200
        assert app.refusals.summary()["counts"]["headers"] == 3


def test_slo_precedence_is_the_tighter_of_body_and_header() -> None:
    body = orjson.dumps({**ONE, "parameters": {"slo_ms": 80}})
    assert slo_hint(body, None, b"50", 500.0) == 50.0
    assert slo_hint(body, None, b"900", 500.0) == 80.0
    assert slo_hint(body, None, b"soon", 500.0) is None  # the full parse answers 400


@on_uvloop
async def test_the_full_path_serves_the_tighter_slo() -> None:
    async with serving() as (port, _gw, _app):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        for slo, hdr, want in ((800, "4000", 800), (4000, "700", 700)):  # a batch: 300 ms
            body = orjson.dumps({**ONE, "parameters": {"slo_ms": slo}})
            w.write(infer(body, f"x-tidal-slo-ms: {hdr}\r\n"))
            status, _, doc = await read_response(r)
            assert status == 200 and orjson.loads(doc)["parameters"]["slo_ms"] == want, doc
        w.close()


def test_rows_from_the_binary_extension_lengths() -> None:
    per_row = row_bytes([TensorMeta("a", "FP32", (-1, 64)), TensorMeta("b", "INT8", (-1, 2))])
    assert per_row == 4 * 64 + 2
    assert rows_at_least(100 + 3 * per_row, 100, False, per_row) == 3
    assert rows_at_least(100 + 3 * per_row - 1, 100, False, per_row) == 3  # a lower bound
    assert rows_at_least(100 + 3 * per_row, 100, True, per_row) == 1  # compressed: unknown
    assert rows_at_least(5000, None, False, per_row) == 1  # JSON: at least one row
    assert row_bytes([TensorMeta("s", "BYTES", (-1, 1))]) is None
    assert row_bytes([TensorMeta("v", "FP32", (-1, -1))]) is None
