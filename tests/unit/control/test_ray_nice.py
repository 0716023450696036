"""`tidal.control.ray_connect.unnice` without Ray: a process started at nice 10 with a second
thread (Ray starts its workers at nice 15, every thread inheriting it) ends with every
thread at nice 0 when the process may lower its nice (root, CAP_SYS_NICE), else it is told
why, and nothing is half-claimed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import json, os, threading
os.nice(10)
stop = threading.Event()
t = threading.Thread(target=stop.wait)
t.start()
from tidal.control.ray_connect import unnice
why = unnice()
nices = [os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir("/proc/self/task")]
stop.set()
print(json.dumps({"why": why, "nices": nices}))
"""


def test_every_thread_leaves_rays_nice() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(got["nices"]) >= 2  # the main thread and the one started at nice 10
    if os.geteuid() == 0:
        assert got["why"] is None
        assert got["nices"] == [0] * len(got["nices"])
    else:  # lowering nice needs CAP_SYS_NICE: the reason is returned
        assert "cannot set nice 0" in got["why"]
        assert all(n == 10 for n in got["nices"])
