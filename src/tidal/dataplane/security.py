"""Security checks of the serving process: where it may bind, and what its children inherit.

- :func:`check_bind` (called by the server runner before it binds): a non-loopback address
  without an admin token is refused with a TidalError naming the address; with a token but no
  TLS it returns a warning that traffic (including the bearer token) is not encrypted.
- :func:`child_env`: the environment for a worker process: this process's environment minus
  every variable that looks like a credential (``TIDAL_TOKEN``, ``*_TOKEN``, ``*SECRET*``,
  ``*PASSWORD*``, ``*API_KEY*``, ``*CREDENTIAL*``, ``*PRIVATE_KEY*``, ``AWS_*``...). Workers
  run user models; they never need the gateway's secrets.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

from tidal.core.errors import TidalError

_SECRET_PARTS = (
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "API_KEY",
    "APIKEY",
    "ACCESS_KEY",
    "CREDENTIAL",
    "PRIVATE_KEY",
    "AUTH",
    "COOKIE",
    "SESSION",
)
_SECRET_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_APPLICATION_", "GCP_", "HF_", "HUGGING_FACE")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; False for 0.0.0.0, :: and other addresses."""
    h = host.strip().strip("[]").lower()
    if h in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False  # a host name other than localhost: may resolve anywhere


def check_bind(host: str, token: str | None, tls: bool) -> list[str]:
    """Warnings for binding `host` (empty on loopback). Raises TidalError for a non-loopback
    address without an admin token: anyone who can reach the port could change the plan."""
    if is_loopback(host):
        return []
    if not token:
        raise TidalError(
            f"refusing to bind {host!r} without an admin token: set `token:` in the config or "
            "TIDAL_TOKEN (>= 16 characters), or bind 127.0.0.1"
        )
    if tls:
        return []
    return [
        f"binding {host!r} without TLS: requests and the admin bearer token travel unencrypted "
        "(set tls_certfile and tls_keyfile, or put a TLS proxy in front)"
    ]


def is_secret_name(name: str) -> bool:
    """True if an environment variable named `name` may carry a credential."""
    n = name.upper()
    return any(p in n for p in _SECRET_PARTS) or n.startswith(_SECRET_PREFIXES)


def child_env(
    base: Mapping[str, str] | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """`base` (default os.environ) without credential-like variables, then `extra` on top."""
    src = os.environ if base is None else base
    env = {k: v for k, v in src.items() if not is_secret_name(k)}
    if extra:
        env.update(extra)
    return env


__all__ = ["check_bind", "child_env", "is_loopback", "is_secret_name"]
