"""The node manager's HTTP API (real uvicorn, bearer token) and the operator that calls a
served model over the Open Inference Protocol v2 (the real `tidal serve` gateway)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from tidal.cep import operators, workload
from tidal.cep.api import ApiHub, make_app
from tidal.cep.manager import DeployDefaults, NodeManager
from tidal.cep.sockstore import SocketStoreServer
from tidal.cep.store import MemoryStore
from tidal.cep.stream import connect
from tidal.core.errors import TidalError
from tidal.core.shared import repo_root

TOKEN = "t" * 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[str, NodeManager]]:
    srv = SocketStoreServer(MemoryStore(f"api-{tmp_path.name}"), str(tmp_path / "s.sock"))
    m = NodeManager(tmp_path, srv.url, DeployDefaults(codec="json"))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(make_app(m, TOKEN), host="127.0.0.1", port=port, log_level="error")
    )
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(500):
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.01)
    yield url, m
    server.should_exit = True
    th.join(5)
    m.close()
    srv.close()


def test_api_register_request_update_list_stop(api) -> None:
    url, m = api
    src = operators.path("fraud_flag").read_text()
    r = httpx.post(f"{url}/v1/operators/ff/versions", json={"source": src})
    assert r.status_code == 401 and "token" in r.json()["error"]  # registration without token
    r = httpx.post(
        f"{url}/v1/operators/ff/versions",
        json={"source": src},
        headers={"Authorization": "Bearer wrong-token-xxxxxxxxx"},
    )
    assert r.status_code == 401
    hub = ApiHub(url, TOKEN)
    assert hub.register("ff", source=src) == 1
    assert hub.register("ff", source=src) == 2
    with pytest.raises(TidalError, match=r"unknown operator 'nope'.*HTTP 404"):
        hub.request("nope")
    with pytest.raises(TidalError, match="exactly one of 'source' or 'command'"):
        hub.register("ff")
    with pytest.raises(TidalError, match="bad operator name"):
        hub.register("Bad Name", source=src)
    cl = connect(hub, "ff")
    cl.submit([{"card": 1, "amount": 5000.0}, {"card": 2, "amount": 5.0}])
    rep = hub.update("ff", 2)
    assert rep["version"] == 2 and rep["old_exit"] == 0
    got: list[dict] = []
    t = time.monotonic()
    while len(got) < 2 and time.monotonic() - t < 10:
        got += cl.results()
        time.sleep(0.005)
    cl.close()
    assert [g["flag"] for g in got] == [1, 0]
    rows = {r["name"]: r for r in hub.list()}
    assert rows["ff"]["versions"] == [1, 2] and rows["ff"]["version"] == 2
    assert hub.stop("ff")["stopped"]
    with pytest.raises(TidalError, match="not running"):
        hub.stop("ff")
    hub.close()


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    cfg = repo_root() / "examples" / "single-model.yaml"
    # both ship with the repo and its venv: their absence is a broken checkout, not a skip
    assert cfg.is_file(), f"{cfg} is missing"
    assert shutil.which("tidal", path=str(Path(sys.executable).parent)), "tidal is not installed"
    port = free_port()
    p = subprocess.Popen(
        [str(Path(sys.executable).parent / "tidal"), "serve", str(cfg), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert p.poll() is None, "tidal serve exited"
            time.sleep(0.1)
        yield url
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def test_operator_calls_served_model_over_oip_v2(tmp_path, gateway) -> None:
    from tidal.cep.operators.oip_model import features
    from tidal.cep.registry import VersionSpec

    srv = SocketStoreServer(MemoryStore("oip"), str(tmp_path / "s.sock"))
    m = NodeManager(tmp_path, srv.url, DeployDefaults(codec="packed", batch=16))
    try:
        env = {"TIDAL_CEP_OIP_URL": gateway, "TIDAL_CEP_OIP_MODEL": "digits"}
        src = operators.path("oip_model").read_text()
        m.register("model", VersionSpec(source=src, env=env, network=True))  # calls the model
        cl = connect(m, "model")
        arr = workload.transactions(40, seed=9)
        cl.submit(arr)
        got: list[np.ndarray] = []
        t = time.monotonic()
        while sum(len(b) for b in got) < 40 and time.monotonic() - t < 60:
            got += cl.poll()  # type: ignore[arg-type]
            time.sleep(0.01)
        cl.close()
        out = np.concatenate(got)
        x = features(arr["card"], arr["amount"], arr["ts"], arr["merchant"])
        r = httpx.post(
            f"{gateway}/v2/models/digits/infer",
            json={
                "inputs": [
                    {
                        "name": "input-0",
                        "shape": list(x.shape),
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    }
                ]
            },
            timeout=30,
        )
        y = np.asarray(r.json()["outputs"][0]["data"]).reshape(40, 10).argmax(axis=1)
        assert out["seq"].tolist() == list(range(40))
        assert out["flag"].tolist() == y.tolist()
    finally:
        m.close()
        srv.close()


# The template's counting, stamped with the version whose code produced each result and
# with a value of the version's own environment (spec.env), read at module load.
NODE_STAMPED = """
const V = Number(process.env.TIDAL_CEP_VERSION);
const TAG = process.env.TAG || '';
module.exports = {
  required: ['card'],
  process(events, state) {
    return events.map((e) => {
      const k = String(e.card);
      state[k] = (state[k] || 0) + 1;
      return { seq: e.seq, card: e.card, seen: state[k], v: V, tag: TAG, env: process.env.TAG };
    });
  },
};
"""


@pytest.mark.node
@pytest.mark.parametrize("node_update", ["swap", "process"])
def test_node_operator_on_the_embedded_store(tmp_path, node_update) -> None:
    """Two hot updates (in place, or to a new process) at stream boundaries: every event
    once and in order, the per-card counts carried, each result from exactly one version
    with that version's environment (the old one's TAG does not leak into the new one)."""
    from tidal.cep.registry import VersionSpec

    srv = SocketStoreServer(MemoryStore("node-emb"), str(tmp_path / "s.sock"))
    d = DeployDefaults(codec="json", batch=50, node_update=node_update)
    m = NodeManager(tmp_path, srv.url, d)
    try:
        for tag in ("one", "two", ""):
            env = {"TAG": tag} if tag else {}
            m.register("nodeop", VersionSpec(language="node", source=NODE_STAMPED, env=env))
        m.request("nodeop", 1)
        cl = connect(m, "nodeop")
        evs = [{"card": i % 4, "seq": i} for i in range(800)]
        reports = []
        for k, v in enumerate((2, 3)):
            cl.submit(evs[200 * k : 200 * (k + 1)])
            cl.flush()
            reports.append(m.update("nodeop", v))
        cl.submit(evs[400:600])
        got: list[dict] = []
        t = time.monotonic()
        while len(got) < 600 and time.monotonic() - t < 20:
            got += cl.results()
            time.sleep(0.005)
        # kill -9 after the updates: the restart runs version 3 with the checkpointed state
        pid = m.deployments["nodeop"].proc.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        cl.submit(evs[600:])
        while len(got) < 800 and time.monotonic() - t < 30:
            got += cl.results()
            time.sleep(0.005)
        cl.close()
        assert [e["seq"] for e in got] == list(range(800))
        assert [e["seen"] for e in got if e["card"] == 1] == list(range(1, 201))
        assert m.deployments["nodeop"].restarts == 1
        vs = [e["v"] for e in got]
        assert vs == sorted(vs) and vs[0] == 1 and vs[-1] == 3  # no interleaving of versions
        want = {1: "one", 2: "two", 3: ""}
        assert all(e["tag"] == want[e["v"]] for e in got)
        assert all(e.get("env") == (want[e["v"]] or None) for e in got)
        assert [bool(r.get("in_place")) for r in reports] == [node_update == "swap"] * 2
    finally:
        m.close()
        srv.close()


@pytest.mark.node
def test_node_in_place_update_that_cannot_load_fails_and_the_old_version_serves(
    tmp_path,
) -> None:
    """Make-before-break in place: a version whose module throws at load is refused with
    its error, before any barrier; the running version keeps its state and serves on."""
    from tidal.cep.registry import VersionSpec

    srv = SocketStoreServer(MemoryStore("node-bad"), str(tmp_path / "s.sock"))
    m = NodeManager(tmp_path, srv.url, DeployDefaults(codec="json", batch=50))
    try:
        m.register("nodeop", VersionSpec(language="node", source=NODE_STAMPED))
        bad = "throw new Error('broken at load');\n"
        m.register("nodeop", VersionSpec(language="node", source=bad))
        m.request("nodeop", 1)
        cl = connect(m, "nodeop")
        cl.submit([{"card": 0, "seq": i} for i in range(10)])
        cl.flush()
        with pytest.raises(TidalError, match="broken at load"):
            m.update("nodeop", 2)
        cl.submit([{"card": 0, "seq": i} for i in range(10, 20)])
        got: list[dict] = []
        t = time.monotonic()
        while len(got) < 20 and time.monotonic() - t < 20:
            got += cl.results()
            time.sleep(0.005)
        cl.close()
        assert [e["seen"] for e in got] == list(range(1, 21))
        assert {e["v"] for e in got} == {1}
        assert m.deployments["nodeop"].version == 1
    finally:
        m.close()
        srv.close()
