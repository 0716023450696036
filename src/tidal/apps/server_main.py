"""Run a closed loop (gateway + controller + dashboard) in this process, for the demo and
`tidal validate`: ``python -m tidal.apps.server_main CONFIG.yaml --policy P ...``.

Prints ``TIDAL-READY <port>`` on stdout once the gateway is warm and the controller runs,
and exits cleanly on SIGTERM/SIGINT (uvicorn's handlers).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import uvicorn

from tidal.config.serve import load_serve_config
from tidal.control.closedloop import LoopOptions, build_closed_loop, load_profiles
from tidal.planners.base import Capacity


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tidal.apps.server_main")
    ap.add_argument("config")
    ap.add_argument("--policy", default=None)
    ap.add_argument("--policy-kwargs", default="{}", help="JSON object")
    ap.add_argument("--forecast", default=None)
    ap.add_argument("--decisions", default=None)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--cores-per-node", type=float, default=None)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--best-effort", action="store_true")
    ap.add_argument("--substrate", default="local", choices=["local", "ray"])
    ap.add_argument("--address", default=None, help="Ray cluster address (substrate ray)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    cfg = load_serve_config(a.config)
    if a.port is not None:
        cfg = cfg.model_copy(update={"port": a.port})
    cap = Capacity(a.nodes, a.cores_per_node) if a.cores_per_node else None
    opts = LoopOptions(
        policy=a.policy,
        policy_kwargs=json.loads(a.policy_kwargs),
        forecast=a.forecast,
        decisions_path=a.decisions,
        capacity=cap,
        best_effort=a.best_effort,
        profile=load_profiles(a.profile) if a.profile else None,
        substrate=a.substrate,
        address=a.address,
    )
    cl = build_closed_loop(cfg, opts)
    server = uvicorn.Server(
        uvicorn.Config(
            cl, host=cfg.host, port=cfg.port, log_level="warning", lifespan="on", access_log=False
        )
    )
    orig = server.startup

    async def startup(sockets: object = None) -> None:
        await orig(sockets)  # type: ignore[arg-type]
        port = server.servers[0].sockets[0].getsockname()[1] if server.servers else cfg.port
        print(f"TIDAL-READY {port}", flush=True)

    server.startup = startup  # type: ignore[method-assign]
    server.run()


if __name__ == "__main__":
    main()
