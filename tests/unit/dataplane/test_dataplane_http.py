"""The OIP v2 ASGI app over fake executors: routes, error table, admin token, plan endpoint."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import numpy as np
import pytest
from dataplane_fakes import FakeFactory

from tidal.config.serve import parse_serve_config
from tidal.dataplane.gateway import Gateway
from tidal.dataplane.http import OIPApp

CFG = {
    "models": [{"name": "digits", "variants": ["digits-mlp", "digits-linear"]}],
    "token": "s3cret-0123456789",
    "max_body_bytes": 4096,
    "default_slo_ms": 500,
}


def _body(**over: Any) -> dict[str, Any]:
    inp = {"name": "input-0", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}
    inp.update(over)
    return {"inputs": [inp]}


async def _with_app(fn: Any, **cfg: Any) -> Any:
    fac = FakeFactory(base=0.001, per_item=0.0)
    config = parse_serve_config({**CFG, **cfg})
    gw = Gateway(config, factory=fac, fits={"digits-mlp": fac.fit(), "digits-linear": fac.fit()})
    app = OIPApp(gw)
    await gw.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await fn(c)
    finally:
        await gw.stop()


def test_standard_routes_and_infer() -> None:
    async def fn(c: httpx.AsyncClient) -> None:
        assert (await c.get("/v2/health/live")).json() == {"live": True}
        assert (await c.get("/v2/health/ready")).status_code == 200
        meta = (await c.get("/v2/models/digits")).json()
        assert meta["inputs"][0] == {"name": "input-0", "datatype": "FP32", "shape": [-1, 64]}
        assert (await c.get("/v2/models/digits/ready")).json() == {"name": "digits", "ready": True}
        r = await c.post("/v2/models/digits/infer", json={**_body(), "id": "abc"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["id"] == "abc" and out["model_name"] == "digits"
        assert out["outputs"][0]["shape"] == [1, 64]
        assert out["outputs"][0]["data"][:2] == [1.0, 1.0]  # the fake doubles its input
        p = out["parameters"]
        assert p["variant"] == "digits-mlp" and p["batch_size"] == 1
        assert 0 <= p["queue_ms"] <= p["total_ms"]
        # an unknown version is a 404 (never served by some variant); slo via header/parameters
        r = await c.post("/v2/models/digits/versions/1/infer", json=_body())
        assert r.status_code == 404 and "unknown version '1'" in r.json()["error"], r.text
        r = await c.post("/v2/models/digits/infer", json=_body(), headers={"x-tidal-slo-ms": "50"})
        assert r.status_code == 200
        r = await c.post("/v2/models/digits/infer", json={**_body(), "parameters": {"slo_ms": 80}})
        assert r.status_code == 200
        m = (await c.get("/metrics")).text
        for series in (
            "tidal_arrivals_total",
            "tidal_completions_total",
            'tidal_slo_violations_total{cause="refused",stage="digits"}',
            "tidal_latency_seconds_bucket",
            "tidal_queue_length",
            "tidal_batch_size_bucket",
            "tidal_cores{",
            "tidal_replicas{",
            "tidal_cold_start_seconds_count",
            "tidal_resize_seconds_count",
        ):
            assert series in m, series
        assert 'tidal_completions_total{stage="digits"} 3.0' in m

    asyncio.run(_with_app(fn))


def test_binary_tensor_extension() -> None:
    async def fn(c: httpx.AsyncClient) -> None:
        x = np.arange(64, dtype=np.float32)
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input-0",
                        "shape": [1, 64],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 256},
                    }
                ]
            }
        ).encode()
        r = await c.post(
            "/v2/models/digits/infer",
            content=header + x.tobytes(),
            headers={"inference-header-content-length": str(len(header))},
        )
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"][:3] == [0.0, 2.0, 4.0]

    asyncio.run(_with_app(fn))


ERRORS = [
    ("malformed json", b"{not json", {}, 400, "malformed JSON"),
    ("not an object", b"[1,2]", {}, 400, "JSON object"),
    ("no inputs", b'{"x":1}', {}, 400, "`inputs` must be a non-empty list"),
    ("wrong datatype", _body(datatype="FP64"), {}, 400, "does not match the model's FP32"),
    ("unknown datatype", _body(datatype="FLOAT"), {}, 400, "unknown datatype"),
    ("wrong shape", _body(shape=[1, 63], data=[0.1] * 63), {}, 400, "does not match the model's"),
    ("bad shape", _body(shape="64"), {}, 400, "shape must be"),
    ("count mismatch", _body(data=[0.1] * 10), {}, 400, "needs 64"),
    ("wrong dtype values", _body(data=["a"] * 64), {}, 400, "not all FP32"),
    ("nan", _body(data=[float("nan")] * 64), {}, 400, "malformed JSON"),
    (
        "overflow",
        b'{"inputs":[{"name":"i","shape":[1,1],"datatype":"FP32","data":[1]}]}',
        {},
        400,
        "unknown input 'i'",
    ),
    ("negative slo", {**_body(), "parameters": {"slo_ms": -5}}, {}, 400, "slo_ms must be in"),
    ("absurd slo", {**_body(), "parameters": {"slo_ms": 1e12}}, {}, 400, "slo_ms must be in"),
    ("text slo header", _body(), {"x-tidal-slo-ms": "soon"}, 400, "number of milliseconds"),
    ("too big", {**_body(), "pad": "x" * 5000}, {}, 413, "exceeds the cap"),
]


@pytest.mark.parametrize(("label", "body", "headers", "status", "msg"), ERRORS)
def test_bad_input_table(
    label: str, body: Any, headers: dict[str, str], status: int, msg: str
) -> None:
    async def fn(c: httpx.AsyncClient) -> None:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = await c.post("/v2/models/digits/infer", content=content, headers=headers)
        assert r.status_code == status, (label, r.text)
        assert msg in r.json()["error"], (label, r.text)
        # the server stays up and serves the next request
        assert (await c.post("/v2/models/digits/infer", json=_body())).status_code == 200

    asyncio.run(_with_app(fn))


def test_unknown_model_and_routes() -> None:
    async def fn(c: httpx.AsyncClient) -> None:
        r = await c.post("/v2/models/nope/infer", json=_body())
        assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
        assert (await c.get("/v2/models/nope")).status_code == 404
        assert (await c.get("/nowhere")).status_code == 404
        assert (await c.get("/v2/models/digits/infer")).status_code == 405

    asyncio.run(_with_app(fn))


def test_admin_plan_needs_token() -> None:
    plan = {
        "stages": [
            {"stage": "digits", "variants": [{"name": "digits-linear"}], "replicas": 2,
             "cores": 0.5, "batch": 4}
        ]
    }  # fmt: skip

    async def fn(c: httpx.AsyncClient) -> None:
        assert (await c.get("/admin/plan")).status_code == 401
        assert (await c.put("/admin/plan", json=plan)).status_code == 401
        bad = {"authorization": "Bearer wrong"}
        assert (await c.put("/admin/plan", json=plan, headers=bad)).status_code == 401
        auth = {"authorization": "Bearer s3cret-0123456789"}
        r = await c.put("/admin/plan", json=plan, headers=auth)
        assert r.status_code == 200, r.text
        got = (await c.get("/admin/plan", headers=auth)).json()
        assert got["stages"][0]["replicas"] == 2 and got["stages"][0]["variants"][0]["name"] == (
            "digits-linear"
        )
        r = await c.post("/v2/models/digits/infer", json=_body())
        assert r.json()["parameters"]["variant"] == "digits-linear"
        r = await c.put("/admin/plan", json={"stages": []}, headers=auth)
        assert r.status_code == 400 and "stages" in r.json()["error"]
        wrong = {"stages": [{**plan["stages"][0], "stage": "zzz"}]}
        r = await c.put("/admin/plan", json=wrong, headers=auth)
        assert r.status_code == 400 and "unknown stage 'zzz'" in r.json()["error"]
        stats = (await c.get("/admin/stats", headers=auth)).json()
        assert stats["digits"]["replicas"] == 2

    asyncio.run(_with_app(fn))


def test_admin_disabled_without_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDAL_TOKEN", raising=False)

    async def fn(c: httpx.AsyncClient) -> None:
        r = await c.get("/admin/plan", headers={"authorization": "Bearer "})
        assert r.status_code == 403 and "no token configured" in r.json()["error"]

    asyncio.run(_with_app(fn, token=None))
