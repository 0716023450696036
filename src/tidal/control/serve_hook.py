"""The hooks `tidal serve` calls (tidal.cli.serve): mount the dashboard, start the controller.

- ``wrap(oip_app, gateway)`` returns the ASGI app to serve: the data plane's app plus
  ``/dashboard`` and ``/dashboard/data.json`` (a :class:`ClosedLoop` with no controller yet).
- ``start(gateway, policy, **options)`` starts the controller on the gateway's event loop once
  the gateway is warm (``run(config, on_start=...)``).
"""

from __future__ import annotations

import weakref
from typing import Any

from tidal.control.closedloop import ClosedLoop, LoopOptions, ray_factory
from tidal.control.decisions import DecisionLog

_LOOPS: weakref.WeakKeyDictionary[Any, ClosedLoop] = weakref.WeakKeyDictionary()


def wrap(oip_app: Any, gateway: Any, factory: Any = None) -> ClosedLoop:
    """The data plane's ASGI app with the dashboard mounted; remembered per gateway.
    `factory` is the Ray executor factory when the gateway runs on Ray (else None)."""
    opts = LoopOptions(substrate="ray" if factory is not None else "local")
    cl = ClosedLoop(gateway, oip_app, gateway.config.default_slo_ms, opts, factory)
    _LOOPS[gateway] = cl
    return cl


def substrate_factory(substrate: str, address: str | None, ray_max_nodes: int | None = None) -> Any:
    """The gateway's executor factory for `substrate` (None = local worker processes).

    For Ray it connects at once, so a wrong address, failed authentication or differing Ray
    versions stop `tidal serve` with one line (TidalError) before anything starts."""
    factory = ray_factory(
        LoopOptions(substrate=substrate, address=address, ray_max_nodes=ray_max_nodes)
    )
    if factory is not None:
        factory.connect()
    return factory


def loop_for(gateway: Any) -> ClosedLoop | None:
    """The ClosedLoop wrapping `gateway`, if any."""
    return _LOOPS.get(gateway)


def start(gateway: Any, policy: str, **options: Any) -> ClosedLoop:
    """Start the controller with `policy` (options: LoopOptions fields) on the running loop."""
    cl = _LOOPS.get(gateway)
    if cl is None:
        raise RuntimeError("serve_hook.start: the gateway's app was not built with wrap()")
    for k, v in options.items():
        if v is None:
            continue
        if not hasattr(cl.options, k):
            raise TypeError(f"unknown controller option {k!r}")
        setattr(cl.options, k, v)
    cl.options.policy = policy
    if cl.options.decisions_path is not None:
        cl.decisions = DecisionLog(cl.options.decisions_path)
    cl.start_controller(policy)
    return cl
