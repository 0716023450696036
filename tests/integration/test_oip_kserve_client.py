"""The KServe SDK's REST (v2) and gRPC clients against a real `tidal serve --model-repository`.
The checks run in a child process (tests/integration/oip_kserve_checks.py): kserve and
tritonclient.grpc cannot be imported into one process (duplicate protobuf symbols)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from oip_server import serve_repository

CHECKS = Path(__file__).with_name("oip_kserve_checks.py")


@pytest.mark.skipif(
    importlib.util.find_spec("kserve") is None,
    reason="kserve is a dev dependency: `make install` (uv pip install -e '.[dev]')",
)
def test_kserve_rest_and_grpc_clients(tmp_path: Path) -> None:
    with serve_repository(tmp_path) as s:
        out = subprocess.run(
            [sys.executable, str(CHECKS), s.http, s.grpc],
            capture_output=True,
            text=True,
            timeout=240,
        )
    report = out.stdout + out.stderr[-3000:]
    assert out.returncode == 0, report
    assert "kserve: 13 passed, 0 failed" in out.stdout, report
