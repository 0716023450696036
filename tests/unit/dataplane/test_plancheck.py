"""Admin plans checked against the machine: 409 and not applied past the capacity, the node's
cores per replica or max_replicas; replicas 0 only as an explicit scale-to-zero."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from dataplane_fakes import FakeFactory

from tidal.config.limits import LimitsConfig
from tidal.config.serve import parse_serve_config
from tidal.core.plan import Plan
from tidal.dataplane.gateway import Gateway
from tidal.dataplane.http import OIPApp
from tidal.dataplane.plancheck import PlanRejected, check_plan, merged

TOKEN = "plancheck-token-0123"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("replicas", "cores", "needle"),
    [
        (1, 1024.0, "1024 cores per replica exceed the node's 2 cores"),
        (3, 1.0, "plan needs 3 cores in total; the capacity is 2"),
        (9, 0.1, "plan has 9 replicas in total; at most 8"),
        (0, 1.0, "replicas 0 scales it to zero"),
    ],
)
def test_check_plan_names_the_limit(replicas: int, cores: float, needle: str) -> None:
    with pytest.raises(PlanRejected, match=needle.replace("(", r"\(")):
        check_plan(Plan.single("m", "noop", replicas, cores, 4), capacity_cores=2, max_replicas=8)


def test_check_plan_accepts_what_fits_and_explicit_zero() -> None:
    check_plan(Plan.single("m", "noop", 4, 0.5, 4), capacity_cores=2, max_replicas=8)
    check_plan(
        Plan.single("m", "noop", 0, 1.0, 4), capacity_cores=2, max_replicas=8, scale_to_zero=True
    )


def test_merged_counts_the_stages_in_force() -> None:
    cur = Plan(
        stages=(
            Plan.single("a", "noop", 1, 1.0, 4).stages[0],
            Plan.single("b", "noop", 1, 0.5, 4).stages[0],
        )
    )
    new = Plan.single("a", "noop", 1, 1.5, 4)  # 1.5 + 0.5 (b, in force) = 2 cores: fits
    m = merged(cur, new)
    assert [s.stage for s in m.stages] == ["a", "b"] and m.total_cores == 2.0
    with pytest.raises(PlanRejected, match="needs 2.5 cores"):
        check_plan(merged(cur, Plan.single("a", "noop", 1, 2.0, 4)), capacity_cores=2,
                   max_replicas=8)  # fmt: skip


def test_default_max_replicas_is_derived_from_the_cores() -> None:
    assert LimitsConfig(capacity_cores=2).max_replicas_resolved() == 8
    assert LimitsConfig(capacity_cores=0.5).max_replicas_resolved() == 4
    assert LimitsConfig(capacity_cores=2, max_replicas=3).max_replicas_resolved() == 3


async def _with_app(fn: Any) -> Any:
    fac = FakeFactory(base=0.001, per_item=0.0)
    cfg = parse_serve_config(
        {
            "models": [{"name": "m", "variants": ["noop"]}],
            "token": TOKEN,
            "limits": {"capacity_cores": 2},
            "plan": Plan.single("m", "noop", 1, 1.0, 4).model_dump(),
        }
    )
    gw = Gateway(cfg, factory=fac, fits={"noop": fac.fit()})
    await gw.start()
    try:
        transport = httpx.ASGITransport(app=OIPApp(gw))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await fn(c, gw, fac)
    finally:
        await gw.stop()


def _plan(replicas: int, cores: float) -> dict[str, Any]:
    return Plan.single("m", "noop", replicas, cores, 4).model_dump()


def test_admin_plan_over_capacity_is_409_and_not_applied() -> None:
    async def fn(c: httpx.AsyncClient, gw: Gateway, fac: FakeFactory) -> None:
        before = gw.current_plan()
        for replicas, cores in ((1, 1024.0), (3, 1.0), (1000, 0.001)):
            r = await c.put("/admin/plan", json=_plan(replicas, cores), headers=AUTH)
            assert r.status_code == 409, r.text
            assert "plan not applied" in r.json()["error"]
        assert gw.current_plan() == before and len(fac.started) == 1  # nothing started
        r = await c.put("/admin/plan", json=_plan(2, 1.0), headers=AUTH)
        assert r.status_code == 200, r.text
        assert gw.metrics_snapshot()["m"].replicas == 2

    asyncio.run(_with_app(fn))


def test_replicas_zero_only_as_explicit_scale_to_zero() -> None:
    async def fn(c: httpx.AsyncClient, gw: Gateway, fac: FakeFactory) -> None:
        r = await c.put("/admin/plan", json=_plan(0, 1.0), headers=AUTH)
        assert r.status_code == 409 and "scale_to_zero=true" in r.json()["error"]
        assert (await c.get("/v2/models/m/ready")).status_code == 200
        r = await c.put("/admin/plan?scale_to_zero=true", json=_plan(0, 1.0), headers=AUTH)
        assert r.status_code == 200, r.text
        for _ in range(100):  # the replica drains and stops
            if not gw.metrics_snapshot()["m"].replicas:
                break
            await asyncio.sleep(0.01)
        r = await c.get("/v2/models/m/ready")
        assert r.status_code == 503
        assert r.json() == {
            "name": "m",
            "ready": False,
            "reason": "stage 'm' is scaled to zero by the plan in force (replicas 0)",
        }

    asyncio.run(_with_app(fn))
