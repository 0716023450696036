"""The Ray substrate on a local multi-node cluster (ray.cluster_utils.Cluster): replicas are
Ray actors placed by the node-capacity model; a scale-out spans nodes and a resize happens in
place (same worker PIDs) under load; when a node disappears its replicas are replaced on the
remaining node. Marked `ray` (CI runs it with `make test-ray`)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from tidal.config.serve import parse_serve_config  # noqa: E402
from tidal.control.closedloop import LoopOptions, build_closed_loop  # noqa: E402
from tidal.control.ray_substrate import RayExecutor, wait_ready  # noqa: E402
from tidal.core.plan import Plan  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

CONFIG = {
    "port": 0,
    "default_slo_ms": 5000,
    "models": [{"name": "m", "variants": ["noop"]}],
    "plan": {
        "stages": [
            {"stage": "m", "variants": [{"name": "noop"}], "replicas": 1, "cores": 1.0, "batch": 4}
        ]
    },
}


@pytest.fixture(scope="module")
def cluster() -> Any:
    # A head with no CPU (hosts no replica) and two 2-core worker nodes.
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [c.add_node(num_cpus=2), c.add_node(num_cpus=2)]
    c.wait_for_nodes()
    yield c, workers
    ray.shutdown()
    c.shutdown()


def nodes_of(gw: Any) -> list[str]:
    return [
        r.executor.node
        for r in gw.stages["m"].replicas()
        if isinstance(r.executor, RayExecutor) and r.state == "ready"
    ]


async def load(gw: Any, seconds: float, rate: float) -> list[str]:
    """Open-loop requests through the gateway (routed to the Ray actors); outcomes."""
    import numpy as np

    x = np.zeros((1, 64), np.float32)
    out: list[str] = []

    async def one() -> None:
        try:
            await gw.infer("m", x, 5000)
            out.append("ok")
        except Exception as e:
            out.append(f"error: {e}")

    tasks = []
    for _ in range(int(seconds * rate)):
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*tasks)
    return out


def test_scale_out_resize_and_node_loss(cluster: Any) -> None:
    c, workers = cluster

    async def main() -> None:
        cl = build_closed_loop(
            parse_serve_config(CONFIG), LoopOptions(substrate="ray", address=c.address)
        )
        gw = cl.gateway
        await gw.start()
        try:
            assert cl.ray_factory.placement.capacity().nodes == 2
            # Scale out 1 -> 3 replicas of 1 core under load: 2 on one node, 1 on the other.
            bg = asyncio.create_task(load(gw, 6.0, 20))
            await gw.apply_plan(Plan.single("m", "noop", replicas=3, cores=1.0, batch=4))
            await wait_ready(gw, "m", 3)
            nodes = nodes_of(gw)
            assert len(set(nodes)) == 2, nodes
            pids = {r.pid for r in gw.stages["m"].replicas()}
            # Resize in place 1 -> 0.5 cores: same worker processes, new allocation.
            await gw.apply_plan(Plan.single("m", "noop", replicas=3, cores=0.5, batch=4))
            await asyncio.sleep(1.0)
            reps = gw.stages["m"].replicas()
            assert {r.pid for r in reps} == pids
            assert all(r.executor.cores == 0.5 for r in reps)
            out = await bg
            assert out.count("ok") == len(out), [o for o in out if o != "ok"][:3]
            # A node disappears: its replicas are replaced on the remaining node.
            crowded = max(set(nodes), key=nodes.count)
            victim = next(w for w in workers if w.node_id == crowded)
            c.remove_node(victim)
            out = await load(gw, 8.0, 10)
            await wait_ready(gw, "m", 3, timeout_s=120)
            assert set(nodes_of(gw)) == set(nodes) - {crowded}
            assert out.count("ok") >= len(out) - 5, [o for o in out if o != "ok"][:3]
        finally:
            await gw.stop()

    asyncio.run(main())
