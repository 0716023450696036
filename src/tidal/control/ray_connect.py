"""Connecting to a Ray cluster and its placement authority (the Ray substrate's cluster-wide
parts; `tidal.control.ray_substrate` holds the replicas and the factory).

- `connect(address)`: `ray.init` once per process, failing fast with one line naming the
  cause (address nobody listens on, authentication, Ray versions).
- `authority()`: the cluster's one placement authority, a detached named actor
  (``tidal-placement`` in namespace ``tidal``) over a pure
  :class:`tidal.control.placement.PlacementBook`, pinned to the head node.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from tidal.control.placement import Grant, NodeSpec, PlacementBook
from tidal.core.errors import TidalError

AUTHORITY_NAME = "tidal-placement"
NAMESPACE = "tidal"
NODE_LABEL = "ray.io/node-id"


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise TidalError(
            "the Ray substrate needs ray: uv pip install --python .venv/bin/python 'ray[serve]'"
        ) from None
    return ray


# ------------------------------------------------------------------ connecting
def _diagnose(address: str | None, err: BaseException) -> str:
    """One line naming why `ray.init(address)` failed."""
    text = f"{type(err).__name__}: {err}"
    low = text.lower()
    if "auth" in low or "unauthenticated" in low or "token" in low:
        return (
            f"Ray at {address} refused this client's authentication ({text.splitlines()[0]}): "
            "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the "
            "cluster's token, or start the cluster and this client with the same setting "
            "(see docs/deploy.md)"
        )
    if "version" in low and ("mismatch" in low or "differ" in low or "incompatible" in low):
        import ray

        return (
            f"Ray versions differ: this client runs ray {ray.__version__}; {text.splitlines()[0]}"
        )
    return f"cannot connect to Ray at {address}: {text.splitlines()[0]}"


def _probe(address: str, timeout_s: float = 3.0) -> None:
    """Fail fast on an address nobody listens on (ray.init would retry for a minute)."""
    if address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise TidalError(f"Ray address {address!r} is not HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise TidalError(f"cannot connect to Ray at {address}: {e}") from None


def connect(address: str | None) -> None:
    """`ray.init(address)` once per process; TidalError with one line naming the cause."""
    ray = _ray()
    if ray.is_initialized():
        return
    if address:
        _probe(address)
    try:
        ray.init(
            address=address,
            namespace=NAMESPACE,
            log_to_driver=False,
            include_dashboard=False,
            # Secrets stay out of the cluster's worker processes (they inherit this env).
            runtime_env={"env_vars": {"TIDAL_TOKEN": "", "TIDAL_CEP_TOKEN": ""}},
        )
    except Exception as e:  # ConnectionError, AuthenticationError, RuntimeError (versions)
        raise TidalError(_diagnose(address, e)) from None


# ------------------------------------------------------------------ nice
def unnice(target: int = 0) -> str | None:
    """Set every thread of this process to nice `target`; None if done, else why not.

    Ray starts its worker processes at nice 15 (the raylet's ``worker_niceness``), so a
    replica actor and the placement authority, every thread of them (Linux nice is per
    thread: each is set), and the worker a replica actor spawns ran at 15 where the local
    substrate's gateway and workers run at 0.
    The actor's calls are on the replica's critical path (start, in-place resize), and on a
    shared node they queued behind every niced job (measured: `where` 0.9 s, a fresh actor
    8 s, load ~6). The Python start-up and `import ray` of a standby, before this runs,
    stay at 15: background work. Lowering nice needs CAP_SYS_NICE (root here; a container
    without it gets the reason, and ``RAY_worker_niceness=0`` on the raylet does the same,
    docs/deploy.md)."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    why = None
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) != target:
                os.setpriority(os.PRIO_PROCESS, tid, target)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        except OSError as e:
            why = f"cannot set nice {target} on thread {tid}: {e}"
    return why


# ------------------------------------------------------------------ the authority
class PlacementAuthority:
    """Body of the detached named actor that owns the cluster's PlacementBook."""

    def __init__(self) -> None:
        self.book = PlacementBook()
        self.nice_error = unnice()  # its calls are on every start's and growth's path

    def reserve(
        self,
        replica: str,
        node: str,
        cores: float,
        node_cores: float,
        cpu_ids: list[int],
        host: str = "",
    ) -> Grant | None:
        self.book.add_node(node, NodeSpec(node_cores, tuple(cpu_ids), host))
        return self.book.reserve(replica, node, cores)

    def resize(self, replica: str, cores: float) -> Grant | None:
        return self.book.resize(replica, cores)

    def release(self, replica: str) -> Grant | None:
        return self.book.release(replica)

    def forget(self, dead: list[str]) -> list[str]:
        """Drop nodes Ray reports dead; returns the replicas that were on them. (Dead, not
        "absent from a list of alive ones": a node that joined after the caller listed the
        alive ones must keep its grants.)"""
        keep = {n: s for n, s in self.book.nodes().items() if n not in set(dead)}
        return self.book.set_nodes(keep)

    def used(self) -> dict[str, float]:
        return self.book.used()

    def grants(self) -> list[Grant]:
        return self.book.grants()


def authority() -> Any:
    """The cluster's placement authority (created on first use, shared by every gateway).

    It is pinned to the head node (the node with Ray's `node:__internal_head__` resource; a
    soft affinity was not honoured for a 0-CPU head, measured) when there is one: its book is
    in memory, and on a worker node that leaves (a node removed, a KubeRay pod scaled down) it
    restarted empty. Measured in `make test-ray`: with the authority on the removed node the
    book held 2.0 of the 3.0 cores the replicas ran with."""
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cls = ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=1)(PlacementAuthority)
    head = next(
        (
            n["NodeID"]
            for n in ray.nodes()
            if n.get("Alive") and "node:__internal_head__" in n.get("Resources", {})
        ),
        None,
    )
    opts: dict[str, Any] = {}
    if head is not None:
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(head, soft=False)
    return cls.options(
        name=AUTHORITY_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, **opts
    ).remote()


# ------------------------------------------------------------------ holds and affinity
def _hold(cores: float, node: str | None) -> Any:
    """A placement group holding `cores` CPUs (on `node` when given)."""
    from ray.util.placement_group import placement_group

    selector = [{NODE_LABEL: node}] if node else None
    return placement_group(
        [{"CPU": float(cores)}], strategy="STRICT_PACK", bundle_label_selector=selector
    )


def _remove(pg: Any) -> None:
    from ray.util.placement_group import remove_placement_group

    remove_placement_group(pg)


def _hold_node(pg: Any) -> str:
    from ray.util.placement_group import placement_group_table

    node: str = placement_group_table(pg)["bundles_to_node_id"][0]
    return node


def _node_affinity(node: str) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node, soft=False)
