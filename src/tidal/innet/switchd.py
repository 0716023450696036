"""A switch process: one switch on raw AF_PACKET sockets, one socket per port.

Run inside a network namespace by `netns.NamespaceFabric`:
    python -m tidal.innet.switchd SPEC.json PORTS.json STATS.json
SPEC is {"kind": "model", "program": ...} (a `switch.Switch` running a mapper program, which
sends every output to all its next hops), {"kind": "extractor", ...} (the entry switch) or
{"kind": "decider", ...} (the exit switch); these two route each output to one next hop.
PORTS maps next-hop ids (as strings; "-1" = the host) to interface names and lists every port
to listen on. Prints "ready" once every socket is bound. On SIGTERM it writes its counters
(frames, malformed, emitted samples) to STATS.json and exits 0.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tidal.innet.program import SwitchProgram
from tidal.innet.switch import Switch

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def open_port(ifname: str) -> socket.socket:
    """A raw socket bound to one interface, receiving every frame."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((ifname, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    return s


def build(spec: dict[str, Any]) -> tuple[Callable[[bytes], list[tuple[int, bytes]]], Any]:
    """(frame -> [(next hop, frame)], the object whose `counters` are reported)."""
    kind = spec.get("kind", "model")
    if kind == "model":
        prog = SwitchProgram.from_json(spec["program"])
        sw = Switch(prog)

        def model(raw: bytes) -> list[tuple[int, bytes]]:
            return [(h, f) for f in sw.receive(raw) for h in prog.emit.next_hops]

        return model, sw
    from tidal.innet.extract import Decider, Extractor  # only the entry / exit switches

    if kind == "extractor":
        routes = {int(k): [int(h) for h in v] for k, v in spec["routes"].items()}
        ex = Extractor(
            routes, spec["input_frag"], spec["slots"], spec["timeout_us"], spec["side_width"]
        )
        return ex.receive, ex
    if kind == "decider":
        d = Decider(spec["k"], spec["window"], spec["slots"], spec.get("need"))
        return d.receive, d
    raise ValueError(f"unknown switch kind {kind!r}")


def serve(spec: dict[str, Any], ports: dict[str, Any], stats: Path) -> None:
    handle, node = build(spec)
    socks = {name: open_port(name) for name in ports["listen"]}
    out = {int(k): socks[v] for k, v in ports["next_hop"].items()}
    running = True

    def stop(_sig: int, _frm: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    while running:
        try:
            readable, _, _ = select.select(list(socks.values()), [], [], 0.2)
        except InterruptedError:
            continue
        for s in readable:
            raw, addr = s.recvfrom(65535)
            if addr[2] == PACKET_OUTGOING:
                continue
            for hop, frame in handle(raw):
                out[hop].send(frame)
    stats.write_text(json.dumps(dict(node.counters)))


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    ports = json.loads(Path(argv[1]).read_text())
    serve(spec, ports, Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
