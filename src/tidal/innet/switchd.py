"""A switch process: one `Switch` on raw AF_PACKET sockets, one socket per port.

Run inside a network namespace by `netns.NamespaceFabric`:
    python -m tidal.innet.switchd PROGRAM.json PORTS.json STATS.json
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


def serve(prog: SwitchProgram, ports: dict[str, Any], stats: Path) -> None:
    sw = Switch(prog)
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
            for frame in sw.receive(raw):
                for hop in prog.emit.next_hops:
                    out[hop].send(frame)
    stats.write_text(json.dumps(dict(sw.counters)))


def main(argv: list[str]) -> int:
    prog = SwitchProgram.from_json(json.loads(Path(argv[0]).read_text()))
    ports = json.loads(Path(argv[1]).read_text())
    serve(prog, ports, Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
