"""The operator sandbox: an operator cannot read a root-owned mode-600 file outside its
directory, cannot see the token (environment, token file, the manager's /proc environ),
runs as the unprivileged user in its own directory and process group, with rlimits and
without TCP; `language: command` is refused unless enabled."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from tidal.cep.manager import DeployDefaults, Forbidden, NodeManager
from tidal.cep.registry import VersionSpec
from tidal.cep.sockstore import SocketStoreServer
from tidal.cep.store import MemoryStore
from tidal.cep.stream import connect

TOKEN = "sandbox-token-0123456789abcdef"
PROBE_PY = """
import json
import os
import resource
import socket

from tidal.cep.sdk.python import Operator


def can_read(path):
    try:
        with open(path) as f:
            f.read()
        return True
    except OSError:
        return False


class Probe(Operator):
    def process(self, batch):
        out = []
        for ev in batch:
            try:
                socket.create_connection(("127.0.0.1", int(ev["port"])), timeout=1).close()
                tcp = True
            except OSError:
                tcp = False
            out.append({
                "uid": os.getuid(),
                "cwd": os.getcwd(),
                "secret": can_read(ev["secret"]),
                "token_file": can_read(ev["token_file"]),
                "parent_environ": can_read(f"/proc/{ev['manager_pid']}/environ"),
                "env_token": "TIDAL_CEP_TOKEN" in os.environ,
                "env_keys": sorted(os.environ),
                "pgid_is_own": os.getpgid(0) == os.getpid(),
                "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                "nproc": resource.getrlimit(resource.RLIMIT_NPROC)[0],
                "tcp": tcp,
            })
        return out


OPERATOR = Probe
"""
PROBE_JS = """
const fs = require('fs');
const can = (p) => { try { fs.readFileSync(p); return true; } catch (e) { return false; } };
module.exports = {
  process(events) {
    return events.map((ev) => ({ uid: process.getuid(), cwd: process.cwd(),
      secret: can(ev.secret), token_file: can(ev.token_file),
      parent_environ: can(`/proc/${ev.manager_pid}/environ`),
      env_token: 'TIDAL_CEP_TOKEN' in process.env }));
  },
};
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the user switch needs root")


def _probe(tmp_path: Path, spec: VersionSpec) -> dict:
    secret = tmp_path / "secret.txt"  # root-owned, mode 600, outside the operator's dir
    secret.write_text("s3cret")
    secret.chmod(0o600)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    srv = SocketStoreServer(MemoryStore(f"sbx-{tmp_path.name}"), str(tmp_path / "s.sock"))
    os.environ["TIDAL_CEP_TOKEN"] = TOKEN  # the manager's own environment holds the token
    m = NodeManager(tmp_path, srv.url, DeployDefaults(codec="json"))
    try:
        m.register("probe", spec)
        cl = connect(m, "probe")
        ev = {
            "secret": str(secret),
            "token_file": str(token_file),
            "manager_pid": os.getpid(),
            "port": listener.getsockname()[1],
        }
        cl.submit([ev])
        got: list[dict] = []
        t = time.monotonic()
        while not got and time.monotonic() - t < 30:
            got += cl.results()
            time.sleep(0.01)
        cl.close()
        assert got, "the probe operator answered nothing"
        assert secret.read_text() == "s3cret"  # readable by root, the test
        return got[0]
    finally:
        del os.environ["TIDAL_CEP_TOKEN"]
        m.close()
        srv.close()
        listener.close()


def test_python_operator_cannot_read_secrets_or_see_the_token(tmp_path) -> None:
    r = _probe(tmp_path, VersionSpec(source=PROBE_PY))
    assert r["uid"] != 0
    assert r["secret"] is False and r["token_file"] is False and r["parent_environ"] is False
    assert r["env_token"] is False
    assert all(k in ("PATH", "HOME", "LANG") or k.startswith("TIDAL_CEP_") for k in r["env_keys"])
    assert "/tidal-cep-ops-" in r["cwd"]
    assert r["pgid_is_own"] is True
    assert r["nofile"] == 1024 and r["nproc"] == 256
    assert r["tcp"] is False  # private network namespace (the store is a unix socket)
    print(json.dumps(r))


@pytest.mark.node
def test_node_operator_cannot_read_secrets_or_see_the_token(tmp_path) -> None:
    r = _probe(tmp_path, VersionSpec(language="node", source=PROBE_JS))
    assert r["uid"] != 0 and "/tidal-cep-ops-" in r["cwd"]
    assert r["secret"] is False and r["token_file"] is False and r["parent_environ"] is False
    assert r["env_token"] is False


def test_command_versions_are_off_unless_enabled(tmp_path) -> None:
    srv = SocketStoreServer(MemoryStore(f"cmd-{tmp_path.name}"), str(tmp_path / "s.sock"))
    m = NodeManager(tmp_path, srv.url, DeployDefaults(codec="json"))
    try:
        with pytest.raises(Forbidden, match="--allow-command"):
            m.register("sh", VersionSpec(language="command", command=["/bin/sh", "-c", "id"]))
    finally:
        m.close()
        srv.close()
