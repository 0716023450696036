"""Bind checks, token length, and the environment a worker process gets."""

from __future__ import annotations

import pytest

from tidal.config.serve import parse_serve_config
from tidal.core.errors import TidalError
from tidal.dataplane.security import check_bind, child_env, is_loopback

M = {"models": [{"name": "m", "variants": ["noop"]}]}


@pytest.mark.parametrize(
    ("host", "loop"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False),
     ("example.com", False)],
)  # fmt: skip
def test_is_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


def test_non_loopback_without_token_fails_with_a_message() -> None:
    with pytest.raises(TidalError, match="refusing to bind '0.0.0.0' without an admin token"):
        check_bind("0.0.0.0", None, tls=False)
    assert check_bind("127.0.0.1", None, tls=False) == []


def test_non_loopback_with_token_warns_unless_tls() -> None:
    (w,) = check_bind("0.0.0.0", "x" * 16, tls=False)
    assert "unencrypted" in w and "tls_certfile" in w
    assert check_bind("0.0.0.0", "x" * 16, tls=True) == []


def test_tokens_have_at_least_16_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TidalError, match="token: String should have at least 16 characters"):
        parse_serve_config({**M, "token": "short"})
    monkeypatch.setenv("TIDAL_TOKEN", "short")
    with pytest.raises(TidalError, match="TIDAL_TOKEN must have at least 16 characters, got 5"):
        parse_serve_config(M).admin_token()


def test_tls_files_go_together() -> None:
    with pytest.raises(TidalError, match="must be given together"):
        parse_serve_config({**M, "tls_certfile": "c.pem"})


def test_child_env_drops_credentials() -> None:
    base = {
        "PATH": "/bin",
        "HOME": "/root",
        "TIDAL_TOKEN": "a",
        "TIDAL_CEP_TOKEN": "b",
        "GITHUB_TOKEN": "c",
        "DB_PASSWORD": "d",
        "MY_SECRET_THING": "e",
        "OPENAI_API_KEY": "f",
        "AWS_SESSION_TOKEN": "g",
        "AWS_REGION": "h",
        "HF_HOME": "i",
        "TIDAL_CACHE": "/c",
    }
    env = child_env(base, extra={"OMP_NUM_THREADS": "1"})
    assert env == {"PATH": "/bin", "HOME": "/root", "TIDAL_CACHE": "/c", "OMP_NUM_THREADS": "1"}
