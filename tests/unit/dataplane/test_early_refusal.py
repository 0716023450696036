"""Early refusal (tidal.dataplane.early): a request the lane would refuse even at one row is
answered 503 before its body is decoded (an idle lane only when one batch is longer than the
budget); an SLO only the full parse can tell takes the full path."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
from dataplane_fakes import FakeFactory

from tidal.config.serve import parse_serve_config
from tidal.dataplane.early import slo_hint
from tidal.dataplane.gateway import Gateway
from tidal.dataplane.http import OIPApp

CFG = {"models": [{"name": "digits", "variants": ["digits-mlp"]}], "default_slo_ms": 5000}
GOOD = {"inputs": [{"name": "input-0", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
# Not a valid tensor (64 values for a shape of 2 x 64): the full parse answers 400.
BAD = {"inputs": [{"name": "input-0", "shape": [2, 64], "datatype": "FP32", "data": [0.5] * 64}]}


def test_slo_hint_reads_the_raw_bytes_only_when_unambiguous() -> None:
    def body(doc: dict[str, Any]) -> bytes:
        return orjson.dumps(doc)

    assert slo_hint(body({**GOOD, "parameters": {"slo_ms": 80}}), None, None, 500.0) == 80.0
    assert slo_hint(b'{"parameters": {"slo_ms" : 1.5e2 }}', None, b"900", 500.0) == 150.0
    assert slo_hint(b'{"parameters": {"slo_ms" : 1.5e2 }}', None, b"9", 500.0) == 9.0  # tighter
    assert slo_hint(body(GOOD), None, b"70", 500.0) == 70.0  # the header, absent in the body
    assert slo_hint(body(GOOD), None, None, 500.0) == 500.0  # the model's default
    assert slo_hint(body(GOOD), None, b"fast", 500.0) is None
    twice = b'{"inputs": [{"parameters": {"slo_ms": 1}}], "parameters": {"slo_ms": 900}}'
    assert slo_hint(twice, None, None, 500.0) is None  # only the full parse can tell
    assert slo_hint(b'{"parameters": {"slo_ms": "80"}}', None, None, 500.0) is None
    # binary extension: only the JSON header is searched, never the tensor bytes
    head = body({"parameters": {"slo_ms": 40}})
    assert slo_hint(head + b'"slo_ms": 1,', len(head), None, 500.0) == 40.0


async def _run(fn: Any) -> Any:
    fac = FakeFactory(base=0.3, per_item=0.0)  # a batch takes 300 ms
    gw = Gateway(parse_serve_config(CFG), factory=fac, fits={"digits-mlp": fac.fit()})
    await gw.start()
    try:
        transport = httpx.ASGITransport(app=OIPApp(gw))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await fn(c, gw)
    finally:
        await gw.stop()


def test_a_busy_lane_refuses_before_the_decode_an_idle_one_decodes() -> None:
    url = "/v2/models/digits/infer"

    async def fn(c: httpx.AsyncClient, gw: Gateway) -> None:
        # idle lane: a deadline one batch can meet is decoded (the bad body answers 400);
        # one shorter than a batch (300 ms) is refused, as the scheduler itself would
        r = await c.post(url, content=orjson.dumps({**BAD, "parameters": {"slo_ms": 4000}}))
        assert r.status_code == 400, r.text
        r = await c.post(url, content=orjson.dumps({**BAD, "parameters": {"slo_ms": 50}}))
        assert r.status_code == 503 and "service time" in r.json()["error"], r.text
        busy = asyncio.ensure_future(c.post(url, content=orjson.dumps(GOOD)))
        while not gw.stages["digits"].pressured():
            await asyncio.sleep(0.005)
        # busy for ~300 ms: a 50 ms SLO cannot be met even by one row -> 503 before decoding
        r = await c.post(url, content=orjson.dumps({**BAD, "parameters": {"slo_ms": 50}}))
        assert r.status_code == 503, r.text
        assert r.json()["cause"] == "refused" and r.headers["retry-after"] == "1"
        r = await c.post(url, content=orjson.dumps(BAD), headers={"x-tidal-slo-ms": "50"})
        assert r.status_code == 503, r.text
        # an SLO that allows waiting, or one only the parse can tell: decoded (400 here)
        r = await c.post(url, content=orjson.dumps({**BAD, "parameters": {"slo_ms": 4000}}))
        assert r.status_code == 400, r.text
        doc = {"inputs": [{**BAD["inputs"][0], "parameters": {"slo_ms": 1}}]}
        r = await c.post(url, content=orjson.dumps({**doc, "parameters": {"slo_ms": 50}}))
        assert r.status_code == 400, r.text
        assert (await busy).status_code == 200
        snap = gw.stages["digits"].counters
        assert snap.violations["refused"] == 3 and snap.arrivals >= 4

    asyncio.run(_run(fn))


def test_one_row_without_a_header_deadline_is_priced_at_the_headers_only_while_refusing() -> None:
    from types import SimpleNamespace

    from tidal.dataplane.early import RECENT_S, headers_refusal

    calls: list[tuple[int, float]] = []
    stage = SimpleNamespace(last_refused=-1e9, quote=lambda r, d, n: calls.append((r, d)))
    clock = SimpleNamespace(now=lambda: 100.0)
    gw = SimpleNamespace(routes={"m": ["s"]}, stages={"s": stage}, clock=clock,
                         config=SimpleNamespace(default_slo_ms=500.0))  # fmt: skip
    assert headers_refusal(gw, "m", None, 1, 100.0, 9000.0) is None
    assert calls == []  # an admitting stage: the body stage prices it once
    headers_refusal(gw, "m", b"50", 1, 100.0, 9000.0)  # a header deadline: priced
    headers_refusal(gw, "m", None, 3, 100.0, 9000.0)  # rows from the lengths: priced
    stage.last_refused = 100.0 - RECENT_S / 2
    headers_refusal(gw, "m", None, 1, 100.0, 9000.0)  # the stage is refusing: priced
    assert [r for r, _ in calls] == [1, 3, 1]
