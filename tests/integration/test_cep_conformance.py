"""Protocol conformance (docs/cep-protocol.md, `tidal.cep.conformance`): the Python host and
the Java host (javac-built, no Flink needed) against the reference operator; the Python and
Node.js SDKs in the operator role (exactly once, frame bound, kill -9, poison, hot update)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidal.cep import conformance
from tidal.cep.redis_server import RedisServer
from tidal.cep.registry import VersionSpec
from tidal.cep.sockstore import SocketStoreServer
from tidal.cep.store import MemoryStore
from tidal.core.shared import repo_root

JAVA_SRC = repo_root() / "src" / "tidal" / "cep" / "flink-job" / "tidal" / "cep" / "flink"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    # only redis-marked tests use it: conftest fails them with the install command first
    with RedisServer() as rs:
        yield rs.url


def _assert_all(checks: list[conformance.Check]) -> None:
    assert all(c.ok for c in checks), conformance.report(checks)
    print(conformance.report(checks))


@pytest.mark.redis
def test_python_host_conforms(redis_url) -> None:
    _assert_all(
        conformance.check_host([sys.executable, "-m", "tidal.cep.conformance", "host"], redis_url)
    )


@pytest.mark.redis
@pytest.mark.java
def test_java_host_conforms(redis_url, tmp_path) -> None:
    srcs = [str(JAVA_SRC / f"{c}.java") for c in ("Resp", "Txn", "TidalHost", "Conformance")]
    subprocess.run(["javac", "-d", str(tmp_path), *srcs], check=True, timeout=300)
    argv = ["java", "-cp", str(tmp_path), "tidal.cep.flink.Conformance"]
    _assert_all(conformance.check_host(argv, redis_url, n=20_000, batch=500))


def _operator(tmp_path: Path, spec: VersionSpec) -> None:
    srv = SocketStoreServer(MemoryStore(f"conf-{tmp_path.name}"), str(tmp_path / "s.sock"))
    try:
        _assert_all(conformance.check_operator(tmp_path, srv.url, spec))
    finally:
        srv.close()


def test_python_sdk_conforms(tmp_path) -> None:
    _operator(tmp_path, VersionSpec(source=conformance.PY_ECHO))


@pytest.mark.node
def test_node_sdk_conforms(tmp_path) -> None:
    _operator(tmp_path, VersionSpec(language="node", source=conformance.NODE_ECHO))
