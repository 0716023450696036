"""A real worker process does not inherit the gateway's tokens or other secrets."""

from __future__ import annotations

import pytest

from tidal.dataplane.worker import WorkerHandle


def test_worker_env_has_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDAL_TOKEN", "gateway-secret-token-0123")
    monkeypatch.setenv("SOME_SERVICE_PASSWORD", "hunter2-hunter2")
    with WorkerHandle.start("noop", cores=0.5) as h:
        with open(f"/proc/{h.pid}/environ", "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        assert b"PATH" in env and env[b"OMP_NUM_THREADS"] == b"1"
        assert b"TIDAL_TOKEN" not in env and b"SOME_SERVICE_PASSWORD" not in env
        assert not any(b"gateway-secret-token" in v for v in env.values())
