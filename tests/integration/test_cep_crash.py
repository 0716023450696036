"""kill -9 of an operator loses neither events nor keyed state, with the default settings
(checkpoints on), for the Python and the Node.js SDK: every event comes back exactly once
and every card's running count reads 1, 2, ..., n across three kills."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tidal.cep import operators
from tidal.cep.manager import DeployDefaults, NodeManager
from tidal.cep.registry import VersionSpec
from tidal.cep.sockstore import SocketStoreServer
from tidal.cep.store import MemoryStore
from tidal.cep.stream import connect

NODE_COUNT = """
module.exports = {
  process(events, state) {
    return events.map((e) => {
      state[e.card] = (state[e.card] || 0) + 1;
      return { ...e, flag: state[e.card] };
    });
  },
};
"""
# Counts in a top-level Float64Array: checkpoints carry it as raw bytes ('V', state.js)
NODE_TYPED_COUNT = """
module.exports = {
  process(events, state) {
    if (!state.c) state.c = new Float64Array(16);
    return events.map((e) => {
      state.c[e.card] += 1;
      return { ...e, flag: state.c[e.card] };
    });
  },
};
"""
N, CARDS, KILLS = 2000, 7, 3


def _kill9_run(tmp_path: Path, spec: VersionSpec, checkpoint_every: int | None = None) -> None:
    srv = SocketStoreServer(MemoryStore(f"crash-{tmp_path.name}"), str(tmp_path / "s.sock"))
    d = DeployDefaults(codec="json", batch=50)
    if checkpoint_every is not None:
        d = d.model_copy(update={"checkpoint_every": checkpoint_every})
    m = NodeManager(tmp_path, srv.url, d)
    assert m.defaults.checkpoint_every > 0  # on by default
    try:
        m.register("cc", spec)
        cl = connect(m, "cc")
        evs = [{"seq": i, "card": i % CARDS} for i in range(N)]
        got: list[dict] = []
        part = N // (KILLS + 1)
        t0 = time.monotonic()
        for k in range(KILLS + 1):
            cl.submit(evs[k * part : (k + 1) * part if k < KILLS else N])
            if k == KILLS:
                break
            # kill -9 the running instance once it has committed part of this slice
            while len(got) < k * part + part // 3 and time.monotonic() - t0 < 60:
                got += cl.results()
                time.sleep(0.005)
            pid = m.deployments["cc"].proc.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            while m.deployments["cc"].proc.pid == pid and time.monotonic() - t0 < 60:
                time.sleep(0.005)  # the supervisor restarts it
        while len(got) < N and time.monotonic() - t0 < 60:
            got += cl.results()
            time.sleep(0.01)
        cl.close()
        kills = KILLS
        assert kills == KILLS and m.deployments["cc"].restarts >= KILLS
        seqs = sorted(e["seq"] for e in got)
        assert seqs == list(range(N)), "lost or duplicated events"  # 0 lost, 0 duplicated
        for c in range(CARDS):  # state kept across every kill -9
            flags = [e["flag"] for e in got if e["card"] == c]
            assert flags == list(range(1, len(flags) + 1)), f"card {c}: {flags[:20]}..."
    finally:
        m.close()
        srv.close()


def test_python_operator_survives_kill9_with_state(tmp_path) -> None:
    _kill9_run(tmp_path, VersionSpec(source=operators.path("card_count").read_text()))


@pytest.mark.node
def test_node_operator_survives_kill9_with_state(tmp_path) -> None:
    _kill9_run(tmp_path, VersionSpec(language="node", source=NODE_COUNT))


@pytest.mark.node
def test_node_typed_array_state_survives_kill9_through_checkpoints(tmp_path) -> None:
    # a checkpoint every 120 events: restarts restore a 'V' snapshot, then replay the log
    _kill9_run(
        tmp_path, VersionSpec(language="node", source=NODE_TYPED_COUNT), checkpoint_every=120
    )
