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
from tidal.innet.chain import Chain, ChainResult
from tidal.innet.extract import RESET_FRAME, STREAM_DECISION, wrap
from tidal.innet.fabric import input_frames, side_width
from tidal.innet.header import MalformedFrame, decode, encode
from tidal.innet.intref import side2d
from tidal.innet.program import HOST, STREAM_BYTES, STREAM_IAT, Mapping
from tidal.innet.switchd import PACKET_OUTGOING, open_port

_SEQ = count()


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise TidalError(f"`ip {' '.join(args)}` failed: {r.stderr.strip()}")


def _quiet_ipv6(ns: str) -> None:
    """No IPv6 on the namespace's links: the kernel would send its own neighbour / multicast
    discovery frames into the switch ports, and the entry switch would classify them too."""
    subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
         "net.ipv6.conf.default.disable_ipv6=1"],
        capture_output=True, timeout=30,
    )  # fmt: skip


def _disable_ipv6_host(ifname: str) -> None:
    path = Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6")
    if path.exists():
        path.write_text("1")


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
    """Switch processes in namespaces (see module contract). Given a `Chain`, the host feeds
    the entry switch real (replay-shimmed) frames and collects the exit switch's output."""

    def __init__(self, mapping: Mapping | Chain, timeout: float = 5.0) -> None:
        self.chain = mapping if isinstance(mapping, Chain) else None
        self.mapping = mapping.mapping if isinstance(mapping, Chain) else mapping
        self.timeout = timeout
        self.prefix = f"tin{os.getpid() % 100000}x{next(_SEQ)}"
        self.namespaces: list[str] = []
        self.host_ifs: list[str] = []
        self.procs: dict[int, subprocess.Popen[str]] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="tidal-innet-"))
        self.stats: dict[int, dict[str, int]] = {}
        self.feed: dict[int, Any] = {}
        self.collect: list[Any] = []
        self._next_index = 0

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

    def _topology(
        self,
    ) -> tuple[dict[int, dict[str, Any]], list[tuple[int, int]], set[int], set[int]]:
        """(spec per switch, links, switches fed by the host, switches emitting to it)."""
        if self.chain is not None:
            c = self.chain
            specs = {s: c.spec(s) for s in c.ids()}
            return specs, c.edges(), {c.extractor_id}, {c.decider_id, c.extractor_id}
        progs = {p.switch_id: p for p in self.mapping.programs}
        specs = {s: {"kind": "model", "program": p.to_json()} for s, p in progs.items()}
        links = sorted({(s, h) for s, p in progs.items() for h in p.emit.next_hops if h != HOST})
        fed = {s for v in self.mapping.entry.values() for s in v}
        out = {s for s, p in progs.items() if HOST in p.emit.next_hops}
        return specs, links, fed, out

    def _setup(self) -> None:
        specs, links, fed, emitters = self._topology()
        ports: dict[int, dict[str, Any]] = {s: {"listen": [], "next_hop": {}} for s in specs}
        for s in specs:
            self.namespaces.append(self.ns(s))
            _ip("netns", "add", self.ns(s))
            _quiet_ipv6(self.ns(s))
            _ip("-n", self.ns(s), "link", "set", "lo", "up")
        for s, hop in links:
            if True:
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
                ports[hop]["next_hop"][str(s)] = b
        for s in specs:
            if s in fed or s in emitters:
                h = self.host_if(s)
                _ip("link", "add", h, "type", "veth", "peer", "name", "ph", "netns", self.ns(s))
                self.host_ifs.append(h)
                _disable_ipv6_host(h)
                # captured frames (TSO/jumbo) can exceed 1500 bytes: the largest veth MTU
                _ip("link", "set", h, "mtu", "65535")
                _ip("-n", self.ns(s), "link", "set", "ph", "mtu", "65535")
                _ip("link", "set", h, "up")
                ports[s]["listen"].append("ph")
                if s in emitters:
                    ports[s]["next_hop"][str(HOST)] = "ph"
        for s in specs:
            for name in ports[s]["listen"]:
                _ip("-n", self.ns(s), "link", "set", name, "up")
        for s, spec in specs.items():
            prog_f, port_f = self.tmp / f"prog{s}.json", self.tmp / f"ports{s}.json"
            prog_f.write_text(json.dumps(spec))
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
        for s in sorted(fed):
            self.feed.setdefault(s, open_port(self.host_if(s)))
        for s in sorted(emitters):
            if True:
                sock = self.feed.get(s) or open_port(self.host_if(s))
                self.feed.setdefault(s, sock)
                self.collect.append(sock)

    def classify(self, x: np.ndarray, iat: np.ndarray, first_index: int = 0) -> np.ndarray:
        """Verdicts for each sample, one sample in flight at a time (-1 if none arrived)."""
        out = np.full(len(x), -1, dtype=np.int64)
        for k in range(len(x)):
            idx = first_index + k
            side = side2d(iat[k : k + 1], side_width(self.mapping))[0]
            for f in input_frames(idx, x[k], side, self.mapping.input_frag):
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

    def replay(self, frames: list[bytes], ts: list[int], window: int = 16) -> ChainResult:
        """Replay captured frames (replay shim: their capture time as ingress timestamp) into
        the entry switch, at most `window` packets in flight, and collect the exit switch's
        per-packet output. Needs a `Chain`. Packets whose output never came get -1."""
        if self.chain is None:
            raise TidalError("replay needs a Chain (entry and exit switches)")
        c = self.chain
        n = len(frames)
        out = np.full((n, 7), -1, dtype=np.int64)
        sock = self.feed[c.extractor_id]
        sock.send(RESET_FRAME)  # fresh flow registers: each capture is replayed on its own
        time.sleep(0.05)
        got, sent = 0, 0
        base = self._next_index
        x = np.zeros((n, 68), dtype=np.int64)
        side = np.zeros((n, c.side_width), dtype=np.int64)
        deadline = time.monotonic() + self.timeout
        while got < n and time.monotonic() < deadline:
            while sent < n and sent - got < window:
                sock.send(wrap(frames[sent], ts[sent]))
                sent += 1
            ready, _, _ = select.select(self.collect, [], [], 0.1)
            for s in ready:
                raw, addr = s.recvfrom(65535)
                if addr[2] == PACKET_OUTGOING:
                    continue
                try:
                    f = decode(raw)
                except MalformedFrame:
                    continue
                i = f.index - base
                if not 0 <= i < n:
                    continue
                if f.stream == STREAM_DECISION and out[i, 0] < 0:
                    out[i] = f.vector
                    got += 1
                    deadline = time.monotonic() + self.timeout
                elif f.stream == STREAM_BYTES:  # the entry switch's mirror port
                    x[i, f.offset : f.offset + len(f.vector)] = f.vector
                elif f.stream == STREAM_IAT:
                    side[i, : len(f.vector)] = f.vector
        self._next_index = base + sent
        return ChainResult(out[:, 0], out[:, 1:3], out[:, 3], out[:, 4:7], x, side, {})

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
