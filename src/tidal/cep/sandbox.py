"""The operator sandbox: an unprivileged user, its own directory, rlimits, no secrets.

`SandboxConfig` says what to apply; `prepare()` (in the node manager, as root) creates the
user and the instance's working directory; `apply()` runs in the operator's child process
between fork and exec (or, for forked Python operators, before the runtime starts), in this
order:

1. ``setsid()``: a fresh session and process group (signals to the manager's group miss it);
   ``chdir`` into the instance directory;
2. where available (root, Linux), ``unshare(CLONE_NEWNS | CLONE_NEWNET)``: a private mount
   namespace in which ``/root`` and ``/home`` are empty tmpfs (unless the interpreter lives
   there) and, unless the operator needs the network, a private network namespace with
   only a down loopback (no TCP to anything, not even 127.0.0.1; path-based unix sockets
   such as the embedded store still work);
3. rlimits: CPU seconds, address space, open files, processes (per user);
4. ``setgroups([])``, ``setgid``, ``setuid`` to the sandbox user;
5. the environment is replaced, not merged: ``PATH``, ``HOME`` (= the instance directory),
   ``LANG`` and the operator contract only. No ``TIDAL_CEP_TOKEN``, nothing else inherited.

What it does not stop (docs/cep.md says so too): reading world-readable files, using CPU up
to the limit, talking to the queue store it was given (its own and other operators' keys:
the store has no per-key ACL), and, with ``network=True`` or a Redis store, the network.
Without root there is no user switch and no namespaces; steps 1, 3 and 5 still apply.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import pwd
import resource
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tidal.core.errors import TidalError

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
HIDDEN_DIRS = ("/root", "/home")


class SandboxConfig(BaseModel):
    """How operators run. Defaults: sandboxed as `user` when the manager is root."""

    enabled: bool = Field(default=True, description="Apply the sandbox at all.")
    user: str = Field(default="tidal-op", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    cpu_s: int = Field(default=86_400, ge=1, description="RLIMIT_CPU (CPU seconds).")
    as_mb: int = Field(default=16_384, ge=64, description="RLIMIT_AS (address space, MB).")
    nofile: int = Field(default=1024, ge=16, description="RLIMIT_NOFILE.")
    nproc: int = Field(default=256, ge=4, description="RLIMIT_NPROC (per user).")
    namespaces: bool = Field(default=True, description="unshare mount (+ network) namespaces.")
    keep_paths: list[str] = Field(default_factory=list, description="Never hide these.")


def is_root() -> bool:
    return os.geteuid() == 0


def ensure_user(name: str) -> tuple[int, int]:
    """(uid, gid) of system user `name`, created with useradd when missing (root only)."""
    try:
        pw = pwd.getpwnam(name)
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        pass
    exe = shutil.which("useradd")
    if exe is None:
        raise TidalError(f"sandbox user {name!r} does not exist and useradd is not available")
    r = subprocess.run(
        [exe, "--system", "--no-create-home", "--home-dir", "/nonexistent", "--user-group"]
        + ["--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
    )
    if r.returncode not in (0, 9):  # 9: created concurrently by someone else
        raise TidalError(f"useradd {name} failed: {r.stderr.strip()}")
    pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


def prepare(cfg: SandboxConfig, workdir: Path) -> dict[str, Any]:
    """Create `workdir` (mode 0700, owned by the sandbox user) and return the plan that
    `apply` executes in the child (a JSON-able dict: it crosses to the fork server)."""
    workdir.mkdir(parents=True, exist_ok=True)
    plan: dict[str, Any] = {
        "cwd": str(workdir),
        "rlimits": {
            "CPU": cfg.cpu_s,
            "AS": cfg.as_mb * 1024 * 1024,
            "NOFILE": cfg.nofile,
            "NPROC": cfg.nproc,
        },
        "namespaces": False,
    }
    if cfg.enabled and is_root():
        uid, gid = ensure_user(cfg.user)
        os.chown(workdir, uid, gid)
        keep = [sys.prefix, sys.base_prefix, sys.executable, str(workdir), *cfg.keep_paths]
        plan.update(uid=uid, gid=gid, namespaces=cfg.namespaces, hide=hidden_dirs(keep))
    os.chmod(workdir, 0o700)
    return plan


def child_env(contract: Mapping[str, str], home: str) -> dict[str, str]:
    """The whole environment of an operator: a safe PATH, HOME, LANG and the contract."""
    env = {"PATH": SAFE_PATH, "HOME": home, "LANG": "C.UTF-8"}
    env.update({k: v for k, v in contract.items() if k != "TIDAL_CEP_TOKEN"})
    return env


def _unshare(flags: int, hide: list[str]) -> bool:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.unshare(flags) != 0:
        return False
    if flags & CLONE_NEWNS:
        # keep our mounts private, then hide the home directories behind empty tmpfs
        libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None)
        for d in hide:
            if os.path.isdir(d):
                libc.mount(b"tmpfs", d.encode(), b"tmpfs", 0, b"mode=0755,size=1m")
    return True


def hidden_dirs(keep: list[str]) -> list[str]:
    """`HIDDEN_DIRS` except those holding a path the operator needs (`keep`: the Python
    installation, the working directory, the store socket)."""
    need = [os.path.realpath(p) for p in keep]
    return [d for d in HIDDEN_DIRS if not any(n == d or n.startswith(d + "/") for n in need)]


def apply(plan: Mapping[str, Any], network: bool) -> None:
    """Apply `plan` (from `prepare`) to the current process. Runs in the child only."""
    with contextlib.suppress(OSError):
        os.setsid()
    os.chdir(plan["cwd"])
    if plan.get("namespaces"):
        _unshare(CLONE_NEWNS | (0 if network else CLONE_NEWNET), list(plan.get("hide", [])))
    for name, lim in plan.get("rlimits", {}).items():
        res = getattr(resource, f"RLIMIT_{name}")
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(res, (int(lim), int(lim)))
    if "uid" in plan:
        os.setgroups([])
        os.setgid(int(plan["gid"]))
        os.setuid(int(plan["uid"]))


def share_socket(path: str, base: Path, cfg: SandboxConfig) -> str:
    """The store URL operators use for the embedded store's unix socket at `path`: the
    socket's inode gets group rw for the sandbox user and a hard link in `base` (reachable
    by it); across file systems the socket's ancestors are made traversable instead."""
    if not (cfg.enabled and is_root()):
        return f"unix://{path}"
    _, gid = ensure_user(cfg.user)
    os.chown(path, -1, gid)
    os.chmod(path, 0o660)
    link = base / "store.sock"
    try:
        os.link(path, link)
        return f"unix://{link}"
    except OSError:
        make_traversable(Path(path).parent)
        return f"unix://{path}"


def make_traversable(d: Path) -> None:
    """Add o+x (search, not read) to `d` and its ancestors so the sandbox user can reach
    a path below it; directory listings stay closed."""
    d = d.resolve()
    while True:
        mode = d.stat().st_mode
        if not mode & 0o001:
            os.chmod(d, (mode & 0o7777) | 0o001)
        if d == d.parent:
            return
        d = d.parent
