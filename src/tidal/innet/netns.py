"""The real transport: each switch a process in its own Linux network namespace, wired by
veth pairs, exchanging raw Ethernet frames over AF_PACKET sockets. All `ip` calls live here.

Contract: `NamespaceFabric(mapping)` is a context manager. On enter it creates one namespace
per switch (unique names: prefix + pid + counter), a veth pair per switch-to-switch edge, a
veth pair between the host (this process's namespace) and every switch that receives input
or emits verdicts, and starts one `switchd` process per namespace. `classify(x, iat)` sends the
feeder frames and returns the verdicts collected from the last switch. On exit (always, also on
errors) it stops the processes by pid, collects their counters, and deletes the namespaces
(which removes their veths). `unavailable()` says why namespaces cannot be used, or None.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from itertools import count
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from tidal.core.errors import TidalError
from tidal.innet.fabric import input_frames
from tidal.innet.header import MalformedFrame, decode, encode
from tidal.innet.program import HOST, Mapping
from tidal.innet.switchd import PACKET_OUTGOING, open_port

_SEQ = count()


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise TidalError(f"`ip {' '.join(args)}` failed: {r.stderr.strip()}")


def unavailable() -> str | None:
    """Why network namespaces cannot be used here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        return f"`ip netns` fails: {r.stderr.strip()}"
    return None


class NamespaceFabric:
    """Switch processes in namespaces (see module contract)."""

    def __init__(self, mapping: Mapping, timeout: float = 5.0) -> None:
        self.mapping = mapping
        self.timeout = timeout
        self.prefix = f"tin{os.getpid() % 100000}x{next(_SEQ)}"
        self.namespaces: list[str] = []
        self.host_ifs: list[str] = []
        self.procs: dict[int, subprocess.Popen[str]] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="tidal-innet-"))
        self.stats: dict[int, dict[str, int]] = {}
        self.feed: dict[int, Any] = {}
        self.collect: list[Any] = []

    def ns(self, sw: int) -> str:
        return f"{self.prefix}s{sw}"

    def host_if(self, sw: int) -> str:
        return f"{self.prefix}h{sw}"[:15]

    def __enter__(self) -> NamespaceFabric:
        try:
            self._setup()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._teardown()

    def _setup(self) -> None:
        progs = {p.switch_id: p for p in self.mapping.programs}
        entries = {s for v in self.mapping.entry.values() for s in v}
        ports: dict[int, dict[str, Any]] = {s: {"listen": [], "next_hop": {}} for s in progs}
        for s in progs:
            self.namespaces.append(self.ns(s))
            _ip("netns", "add", self.ns(s))
            _ip("-n", self.ns(s), "link", "set", "lo", "up")
        for s, p in progs.items():
            for hop in p.emit.next_hops:
                if hop == HOST:
                    continue
                a, b = f"p{hop}", f"p{s}"
                _ip(
                    "link",
                    "add",
                    a,
                    "netns",
                    self.ns(s),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    b,
                    "netns",
                    self.ns(hop),
                )
                ports[s]["listen"].append(a)
                ports[s]["next_hop"][str(hop)] = a
                ports[hop]["listen"].append(b)
        for s, p in progs.items():
            if s in entries or HOST in p.emit.next_hops:
                h = self.host_if(s)
                _ip("link", "add", h, "type", "veth", "peer", "name", "ph", "netns", self.ns(s))
                self.host_ifs.append(h)
                _ip("link", "set", h, "up")
                ports[s]["listen"].append("ph")
                if HOST in p.emit.next_hops:
                    ports[s]["next_hop"][str(HOST)] = "ph"
        for s in progs:
            for name in ports[s]["listen"]:
                _ip("-n", self.ns(s), "link", "set", name, "up")
        for s, p in progs.items():
            prog_f, port_f = self.tmp / f"prog{s}.json", self.tmp / f"ports{s}.json"
            prog_f.write_text(json.dumps(p.to_json()))
            port_f.write_text(json.dumps(ports[s]))
            cmd = [
                "ip",
                "netns",
                "exec",
                self.ns(s),
                sys.executable,
                "-m",
                "tidal.innet.switchd",
                str(prog_f),
                str(port_f),
                str(self.tmp / f"stats{s}.json"),
            ]
            self.procs[s] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        for s, proc in self.procs.items():
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise TidalError(f"switch {s} process did not start (said {line!r})")
        for sws in self.mapping.entry.values():
            for s in sws:
                self.feed.setdefault(s, open_port(self.host_if(s)))
        for s, p in progs.items():
            if HOST in p.emit.next_hops:
                sock = self.feed.get(s) or open_port(self.host_if(s))
                self.feed.setdefault(s, sock)
                self.collect.append(sock)

    def classify(self, x: np.ndarray, iat: np.ndarray, first_index: int = 0) -> np.ndarray:
        """Verdicts for each sample, one sample in flight at a time (-1 if none arrived)."""
        out = np.full(len(x), -1, dtype=np.int64)
        for k in range(len(x)):
            idx = first_index + k
            for f in input_frames(idx, x[k], int(iat[k]), self.mapping.input_frag):
                raw = encode(f)
                for s in self.mapping.entry.get(f.stream, []):
                    self.feed[s].send(raw)
            deadline = time.monotonic() + self.timeout
            while out[k] < 0 and time.monotonic() < deadline:
                ready, _, _ = select.select(self.collect, [], [], 0.1)
                for sock in ready:
                    raw, addr = sock.recvfrom(65535)
                    if addr[2] == PACKET_OUTGOING:
                        continue
                    try:
                        f = decode(raw)
                    except MalformedFrame:
                        continue
                    if f.index == idx:
                        out[k] = f.vector[0]
        return out

    def send_raw(self, sw: int, raw: bytes) -> None:
        """Inject an arbitrary frame into a switch's host port (malformed-frame tests)."""
        self.feed[sw].send(raw)

    def _teardown(self) -> None:
        for sock in set(self.feed.values()) | set(self.collect):
            sock.close()
        for s, proc in self.procs.items():
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stdout:
                proc.stdout.close()
            f = self.tmp / f"stats{s}.json"
            if f.exists():
                self.stats[s] = json.loads(f.read_text())
        for h in self.host_ifs:
            subprocess.run(["ip", "link", "del", h], capture_output=True, timeout=30)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        shutil.rmtree(self.tmp, ignore_errors=True)
