"""The live dashboard rendered by headless Chromium: a real gateway under load with a
controller; every chart of every stage must contain data points."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile

import pytest
import uvicorn

from tidal.config.serve import parse_serve_config
from tidal.control.closedloop import LoopOptions, build_closed_loop
from tidal.workload.loadgen import LoadGenerator, Schedule

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.chromium,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)"
    ),
]

TOKEN = "dashboard-live-token-0123"
CONFIG = {
    "port": 0,
    "token": TOKEN,
    "default_slo_ms": 1000,
    "pipelines": [
        {
            "name": "p",
            "stages": [
                {"name": "pre", "variants": ["noop"]},
                {"name": "cls", "variants": ["digits-linear"]},
            ],
        }
    ],
    "plan": {
        "stages": [
            {
                "stage": "pre",
                "variants": [{"name": "noop"}],
                "replicas": 1,
                "cores": 0.5,
                "batch": 8,
            },
            {
                "stage": "cls",
                "variants": [{"name": "digits-linear"}],
                "replicas": 1,
                "cores": 0.5,
                "batch": 8,
            },
        ]
    },
}
BODY = {"inputs": [{"name": "input-0", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--virtual-time-budget=4000",
    "--dump-dom",
]


def render(url: str) -> str:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={d}", url],
            capture_output=True,
            text=True,
            timeout=90,
        )
    return out.stdout


def test_dashboard_charts_contain_live_data() -> None:
    async def main() -> str:
        cl = build_closed_loop(parse_serve_config(CONFIG), LoopOptions(policy="hpa"))
        server = uvicorn.Server(
            uvicorn.Config(cl, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            assert not task.done()
            await asyncio.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        try:
            n = 150
            sched = Schedule(tuple(i / 50 for i in range(n)), (1000.0,) * n)
            gen = LoadGenerator(f"{base}/v2/models/p/infer", BODY)
            _, report = await gen.run(sched)
            assert report.counts["ok"] > 0
            await asyncio.sleep(1.2)  # one more monitor sample after the load
            # Sign in through the login form (an auto-submitting form on a data: URL), which
            # sets the HttpOnly cookie and redirects to the dashboard.
            login = (
                f'data:text/html,<form method="post" action="{base}/dashboard/login">'
                f'<input name="token" value="{TOKEN}"></form>'
                "<script>document.forms[0].submit()</script>"
            )
            return await asyncio.to_thread(render, login)
        finally:
            await cl.stop_controller()
            server.should_exit = True
            await task

    dom = asyncio.run(main())
    assert 'id="stage-pre"' in dom and 'id="stage-cls"' in dom, dom[:2000]
    series = re.findall(r'data-series="([a-z0-9]+)" data-n="(\d+)"', dom)
    counts: dict[str, list[int]] = {}
    for name, n in series:
        counts.setdefault(name, []).append(int(n))
    # Every chart of both stages has data: rate, latency vs SLO, violations, cores/replicas.
    for name in ("rate", "p50", "p99", "slo", "late", "refused", "cores", "replicas"):
        assert len(counts.get(name, [])) == 2 and min(counts[name]) >= 2, (name, counts)
    assert "forecast" in counts or "policy: hpa" in dom
    # The planner's recent decisions are listed.
    rows = re.findall(r"<tr><td>[-0-9.]+</td><td>hpa</td>", dom)
    assert rows, "no planner decision rendered"
