"""The Ray substrate on a real local multi-node cluster (`ray.cluster_utils.Cluster`: one
head with no CPU, worker nodes of 2 logical CPUs, each a real raylet with its own processes).

Under open-loop load through the live gateway it checks: scale-out across nodes; batches
sent straight from the gateway to each worker process (not through its actor); Ray's own
resource view equals Tidal's cores (placement groups hold them); CPU pins that never overlap
on a node, and an in-place resize read back from the kernel inside the actors; an
over-capacity plan that stays pending and is placed once a node is added; a node removed
and its replicas replaced elsewhere. Every request is answered exactly once (0 lost, 0
duplicated). Marked `ray`: `make test-ray` runs it (CI does)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tidal.config.serve import parse_serve_config
from tidal.control.closedloop import LoopOptions, build_closed_loop
from tidal.control.ray_substrate import RayExecutor, connect, wait_ready
from tidal.core.errors import TidalError
from tidal.core.plan import Plan

try:
    import ray
    from ray.cluster_utils import Cluster

    HAVE_RAY = True
except ImportError:  # `make test` deselects these (-m "not ray"); `make test-ray` installs ray
    HAVE_RAY = False

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


@pytest.fixture(autouse=True)
def _needs_ray() -> None:
    if not HAVE_RAY:
        pytest.fail("ray is not installed: run `make test-ray` (it installs the ray extra)")


CONFIG = {
    "port": 0,
    "default_slo_ms": 10000,
    "models": [{"name": "m", "variants": ["noop"]}],
    "plan": {
        "stages": [
            {"stage": "m", "variants": [{"name": "noop"}], "replicas": 1, "cores": 1.0, "batch": 4}
        ]
    },
}


def ray_free_cpus() -> float:
    return float(ray.available_resources().get("CPU", 0.0))


async def until(cond: Any, timeout_s: float = 60.0) -> None:
    """Poll `cond()` (resizes apply at the replica's next batch boundary, not at once)."""
    for _ in range(int(timeout_s * 10)):
        if cond():
            return
        await asyncio.sleep(0.1)
    assert cond()


def tcp_sockets(pid: int) -> list[tuple[str, str]]:
    """(local, remote) hex address:port of the TCP sockets `pid` holds (/proc/PID/net/tcp)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    rows = [ln.split() for ln in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]]
    return [(r[1], r[2]) for r in rows if r[9] in inodes]


def assert_direct(worker_pid: int) -> None:
    """The worker's data sockets are two TCP connections whose other ends this process (the
    gateway) holds: batches do not pass through its actor (the relay had Unix socketpairs
    between the actor and the worker)."""
    conns = tcp_sockets(worker_pid)
    assert len(conns) == 2, conns
    here = {local for local, _ in tcp_sockets(os.getpid())}
    assert {remote for _, remote in conns} <= here, (conns, here)


def ready_execs(gw: Any) -> list[RayExecutor]:
    return [
        r.executor
        for r in gw.stages["m"].replicas()
        if isinstance(r.executor, RayExecutor) and r.state == "ready"
    ]


class Load:
    """Open-loop requests with ids; each outcome is recorded once per id."""

    def __init__(self, gw: Any) -> None:
        self.gw = gw
        self.outcomes: dict[int, list[str]] = {}
        self.sent = 0

    async def run(self, seconds: float, rate: float) -> None:
        x = np.arange(64, dtype=np.float32).reshape(1, 64)

        async def one(i: int) -> None:
            try:
                res = await self.gw.infer("m", x + i, 10000)
                out = np.asarray(getattr(res, "output", res))
                ok = out.shape == x.shape and float(out.ravel()[0]) == float(i)
                self.outcomes.setdefault(i, []).append("ok" if ok else f"wrong output {out!r}")
            except Exception as e:
                self.outcomes.setdefault(i, []).append(f"error: {e}")

        tasks = []
        for _ in range(int(seconds * rate)):
            tasks.append(asyncio.create_task(one(self.sent)))
            self.sent += 1
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)

    def check(self, allowed_errors: int = 0) -> Counter[str]:
        lost = [i for i in range(self.sent) if i not in self.outcomes]
        dup = [i for i, o in self.outcomes.items() if len(o) != 1]
        assert not lost, f"{len(lost)} requests never answered"
        assert not dup, f"{len(dup)} requests answered twice"
        kinds = Counter(o[0] if o[0] == "ok" else o[0][:60] for o in self.outcomes.values())
        bad = self.sent - kinds["ok"]
        assert bad <= allowed_errors, kinds
        return kinds


def test_connect_fails_fast_with_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nobody listens there
    with pytest.raises(TidalError) as e:
        connect(f"127.0.0.1:{port}")
    assert "cannot connect to Ray" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(TidalError, match="not HOST:PORT"):
        connect("nonsense")


@pytest.fixture(scope="module")
def cluster() -> Any:
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [c.add_node(num_cpus=2), c.add_node(num_cpus=2)]
    c.wait_for_nodes()
    yield c, nodes
    ray.shutdown()
    c.shutdown()


def test_ray_cluster_end_to_end(cluster: Any) -> None:
    c, nodes = cluster

    async def main() -> None:
        cl = build_closed_loop(
            parse_serve_config(CONFIG), LoopOptions(substrate="ray", address=c.address)
        )
        gw = cl.gateway
        await gw.start()
        fac = cl.ray_factory
        try:
            assert fac.capacity().nodes == 2
            assert ray_free_cpus() == pytest.approx(3.0)  # 1 replica x 1 core is held in Ray

            # 1) Scale out 1 -> 3 replicas of 1 core under load: both nodes are used.
            load = Load(gw)
            bg = asyncio.create_task(load.run(6.0, 20))
            await gw.apply_plan(Plan.single("m", "noop", replicas=3, cores=1.0, batch=4))
            await wait_ready(gw, "m", 3)
            execs = ready_execs(gw)
            assert len({e.node for e in execs}) == 2
            assert ray_free_cpus() == pytest.approx(1.0)
            assert sum(fac.used().values()) == pytest.approx(3.0)
            # Pins never overlap on a node, read back from the kernel inside each actor.
            states = [(e.node, e.cpu_state()) for e in execs]
            by_node: dict[str, list[set[int]]] = {}
            for node, st in states:
                by_node.setdefault(node, []).append(set(st["cpus"]))
                assert st["threads_agree"]
            for sets in by_node.values():
                for i, a in enumerate(sets):
                    for b in sets[i + 1 :]:
                        assert a.isdisjoint(b), by_node
            pids = {e.pid for e in execs}
            for pid in pids:
                assert_direct(pid)

            # 2) Resize in place 1 -> 0.5 cores: same processes; the kernel and Ray agree.
            await gw.apply_plan(Plan.single("m", "noop", replicas=3, cores=0.5, batch=4))
            await until(lambda: all(e.cores == 0.5 for e in ready_execs(gw)))
            execs = ready_execs(gw)
            assert {e.pid for e in execs} == pids
            for e in execs:
                st = e.cpu_state()
                if st["mechanism"].startswith("cgroup"):
                    assert st["quota_cores"] == pytest.approx(0.5)
                assert len(st["cpus"]) >= 1
            # Ray frees a removed group's CPUs asynchronously (seen late at load ~9)
            await until(lambda: ray_free_cpus() == pytest.approx(2.5), timeout_s=10)
            await bg
            load.check()

            # 3) Back to 1 core each (grows in place), then over capacity: 5 x 1 core on 4
            # cores. Four run, one is pending in Ray...
            await gw.apply_plan(Plan.single("m", "noop", replicas=3, cores=1.0, batch=4))
            await until(lambda: ray_free_cpus() == pytest.approx(1.0))
            assert {e.pid for e in ready_execs(gw)} == pids
            load = Load(gw)
            bg = asyncio.create_task(load.run(8.0, 10))
            apply = asyncio.create_task(
                gw.apply_plan(Plan.single("m", "noop", replicas=5, cores=1.0, batch=4))
            )
            await wait_ready(gw, "m", 4, timeout_s=180)
            await asyncio.sleep(2.0)
            assert len(ready_execs(gw)) == 4 and not apply.done()
            assert ray_free_cpus() == pytest.approx(0.0)
            # ... and is placed once a node joins (what KubeRay's autoscaler would add).
            nodes.append(c.add_node(num_cpus=2))
            await asyncio.wait_for(apply, timeout=180)
            await wait_ready(gw, "m", 5, timeout_s=60)
            assert fac.capacity().nodes == 3
            await bg
            load.check()

            # 4) Scale to 3, then a node disappears: its replicas are replaced elsewhere.
            await gw.apply_plan(Plan.single("m", "noop", replicas=3, cores=1.0, batch=4))
            await wait_ready(gw, "m", 3, timeout_s=60)
            where = Counter(e.node for e in ready_execs(gw))
            crowded = max(where, key=lambda n: where[n])
            victim = next(n for n in nodes if n.node_id == crowded)
            load = Load(gw)
            bg = asyncio.create_task(load.run(10.0, 10))
            await asyncio.sleep(1.0)
            c.remove_node(victim)
            await bg
            await wait_ready(gw, "m", 3, timeout_s=180)
            assert crowded not in {e.node for e in ready_execs(gw)}
            load.check()
            assert sum(fac.used().values()) == pytest.approx(3.0)

            # 5) The watchdog's kill (through the actor) ends the worker: its connection
            # closes, the gateway replaces the replica, and no request is lost.
            victim_ex = ready_execs(gw)[0]
            load = Load(gw)
            bg = asyncio.create_task(load.run(6.0, 10))
            await asyncio.sleep(1.0)
            victim_ex.kill()
            await until(lambda: not victim_ex.alive(), timeout_s=30)
            await bg
            await wait_ready(gw, "m", 3, timeout_s=180)
            assert victim_ex.pid not in {e.pid for e in ready_execs(gw)}
            load.check()
        finally:
            await gw.stop()
            fac.shutdown()

    asyncio.run(main())


def _alive_tidal_actors() -> list[str]:
    from ray._private import state

    out = []
    for info in state.actors(actor_state_name="ALIVE").values():
        if info["ActorClassName"] in ("ReplicaActor", "PlacementAuthority"):
            out.append(info["ActorClassName"])
    return out


def _held_groups() -> int:
    table = ray.util.placement_group_table()
    return sum(1 for g in table.values() if g["state"] in ("CREATED", "PENDING", "RESCHEDULING"))


def test_sigterm_leaves_no_actor_behind(cluster: Any, tmp_path: Any) -> None:
    import signal
    import subprocess
    import sys
    import time

    import yaml

    c, _ = cluster
    if not ray.is_initialized():
        ray.init(address=c.address, namespace="tidal")
    cfg = tmp_path / "serve.yaml"
    plan = {"stage": "m", "variants": [{"name": "noop"}], "replicas": 2, "cores": 0.5, "batch": 4}
    cfg.write_text(yaml.safe_dump({**CONFIG, "plan": {"stages": [plan]}}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidal.cli.main", "serve", str(cfg), "--port", "0",
         "--grpc-port", "0", "--substrate", "ray", "--address", c.address],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        # warm standby actors are ReplicaActors too, so the count alone can be
        # reached before the plan's replicas hold their cores: wait for both
        while _alive_tidal_actors().count("ReplicaActor") < 2 or _held_groups() < 2:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, f"replicas never held ({_held_groups()})"
            time.sleep(0.5)
        assert _held_groups() == 2  # each replica's cores are held in Ray
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    deadline = time.monotonic() + 60
    while (_alive_tidal_actors() or _held_groups()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _alive_tidal_actors() == [] and _held_groups() == 0


def test_a_growth_without_room_moves_the_replica(cluster: Any) -> None:
    """A replica whose node is full grows by moving (make before break): a replica of the
    new size starts on a node with room, the executor takes it over and the old worker,
    holds and grant go; a growth no node has room for is refused, the replica unchanged."""
    import threading
    import time

    from tidal.control.ray_substrate import RayFactory

    c, _ = cluster
    fac = RayFactory(c.address)
    execs: list[RayExecutor] = []
    x = np.arange(64, dtype=np.float32).reshape(1, 64)
    try:
        nodes = fac.nodes()
        assert len(nodes) >= 2 and all(v == 2.0 for v in nodes.values()), nodes
        for _ in range(2 * len(nodes)):  # 1-core replicas, spread: every node full
            execs.append(fac("noop", 1.0))
        full = execs[0].node
        mine = [e for e in execs if e.node == full]
        assert len(mine) == 2
        for e in execs:
            if e.node != full:
                e.stop()
        grow, keep = mine
        old_pid, old_id = grow.pid, grow.replica_id
        assert fac.used()[full] == pytest.approx(2.0)

        grow.resize(2.0)  # no room on `full`: moved to an empty node
        assert grow.node != full and grow.cores == 2.0 and grow.replica_id != old_id
        assert grow.pid != old_pid and grow.alive()
        assert float(grow.infer(x).ravel()[0]) == 0.0
        st = grow.cpu_state()
        if st["mechanism"].startswith("cgroup"):
            assert st["quota_cores"] == pytest.approx(2.0)
        used = fac.used()
        assert used[full] == pytest.approx(1.0) and used[grow.node] == pytest.approx(2.0)
        assert {g.replica for g in ray.get(fac.authority.grants.remote())} == {
            grow.replica_id,
            keep.replica_id,
        }
        assert any(_gone(old_pid) for _ in range(100)), f"old worker {old_pid} still runs"

        pid = keep.pid
        with pytest.raises(TidalError, match="no node but"):
            keep.resize(3.0)  # more than any node
        assert keep.cores == 1.0 and keep.pid == pid and keep.node == full
        assert fac.used()[full] == pytest.approx(1.0)
        assert float(keep.infer(x + 1).ravel()[0]) == 1.0

        # In place 1 -> 2 (a second hold) while every node is full: the growth is asked
        # again until a replica that is going away frees the room; back to 1: the growth's
        # hold goes, Ray agrees.
        free = ray_free_cpus()
        third = fac("noop", 1.0)
        execs.append(third)
        assert third.node == full
        threading.Timer(0.5, third.stop).start()
        keep.resize(2.0)
        assert keep.node == full and keep.pid == pid and len(keep._holds) == 2
        keep.resize(1.0)
        assert len(keep._holds) == 1 and keep.cores == 1.0
        for _ in range(100):
            if ray_free_cpus() == pytest.approx(free):
                break
            time.sleep(0.1)
        assert ray_free_cpus() == pytest.approx(free)
        assert float(keep.infer(x + 2).ravel()[0]) == 2.0
    finally:
        for e in execs:
            e.stop()
        fac.shutdown()


def _gone(pid: int) -> bool:
    """`pid` has exited (absent, or a zombie awaiting its parent); polls up to 0.1 s."""
    import time

    time.sleep(0.1)
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    return True
