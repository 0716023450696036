"""The process substrate: the only module that starts operator processes.

Python operators fork from a fork server (`tidal.cep.forkserver`) that has numpy, redis,
httpx and the runtime imported, so a new version starts in milliseconds instead of a cold
~0.3 s interpreter start. Other languages run as commands (`subprocess.Popen`). Both expose
`OperatorProcess`. Every operator runs under `tidal.cep.sandbox` (`plan` from
`sandbox.prepare`): its own session, directory, rlimits, user and an environment that holds
the operator contract only. The fork server itself starts with a scrubbed environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol, cast

from tidal.cep import sandbox
from tidal.core.errors import TidalError


class OperatorProcess(Protocol):
    @property
    def pid(self) -> int | None: ...

    def exitcode(self) -> int | None:
        """None while running."""
        ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float) -> int | None: ...


class ForkServer:
    """Client of one `python -m tidal.cep.forkserver` child process."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_CEP_")}
        self._p = subprocess.Popen(
            [sys.executable, "-m", "tidal.cep.forkserver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._out = cast(IO[bytes], self._p.stdout)
        self._in = cast(IO[bytes], self._p.stdin)
        first = json.loads(self._out.readline() or b"{}")
        if not first.get("ready"):
            raise TidalError("the operator fork server did not start")
        self._lock = threading.Lock()
        self._cv = threading.Condition()
        self._pids: list[int] = []
        self.exits: dict[int, int] = {}
        self._reader = threading.Thread(target=self._read, name="cep-forkserver", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._out:
            msg = json.loads(line)
            with self._cv:
                if "pid" in msg:
                    self._pids.append(int(msg["pid"]))
                elif "exit" in msg:
                    self.exits[int(msg["exit"])] = int(msg["code"])
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def fork(self, env: Mapping[str, str], plan: Mapping[str, Any], network: bool) -> int:
        req = {"env": dict(env), "plan": dict(plan), "network": network}
        with self._lock:
            self._in.write(json.dumps(req).encode() + b"\n")
            self._in.flush()
            with self._cv:
                if not self._cv.wait_for(lambda: bool(self._pids), timeout=10):
                    raise TidalError("the operator fork server did not answer")
                return self._pids.pop(0)

    def wait_exit(self, pid: int, timeout: float) -> int | None:
        with self._cv:
            self._cv.wait_for(lambda: pid in self.exits, timeout=timeout)
            return self.exits.get(pid)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._in.close()
        try:
            self._p.wait(5)
        except subprocess.TimeoutExpired:
            self._p.kill()
            self._p.wait()
        self._reader.join(timeout=5)  # it reads to EOF, then the pipe can go
        with contextlib.suppress(OSError):
            self._out.close()


class ForkedPython:
    """A Python operator forked from the preloaded fork server."""

    def __init__(
        self,
        server: ForkServer,
        env: Mapping[str, str],
        plan: Mapping[str, Any],
        network: bool = False,
    ) -> None:
        self._srv = server
        self._pid = server.fork(sandbox.child_env(env, str(plan["cwd"])), plan, network)

    @property
    def pid(self) -> int | None:
        return self._pid

    def exitcode(self) -> int | None:
        return self._srv.exits.get(self._pid)

    def _signal(self, sig: int) -> None:
        if self.exitcode() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, sig)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def wait(self, timeout: float) -> int | None:
        return self._srv.wait_exit(self._pid, timeout)


class Command:
    """An operator in any language, run as a command with the environment contract."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        plan: Mapping[str, Any],
        network: bool = False,
        stdin: bool = False,
    ) -> None:
        """`stdin`: keep a pipe to the child's stdin (`send`), for pre-started runtimes."""
        full = sandbox.child_env(env, str(plan["cwd"]))
        self.cwd = Path(plan["cwd"])  # the process's working directory (its sandbox)
        self.plan = dict(plan)
        try:
            self._p = subprocess.Popen(
                list(argv),
                env=full,
                cwd=str(plan["cwd"]),
                preexec_fn=lambda: sandbox.apply(plan, network),  # noqa: PLW1509
                close_fds=True,
                stdin=subprocess.PIPE if stdin else None,
            )
        except OSError as e:
            raise TidalError(f"cannot start operator command {list(argv)!r}: {e}") from None

    @property
    def pid(self) -> int | None:
        return self._p.pid

    def send(self, line: bytes) -> None:
        """Write one line to the child's stdin and close it (an assignment)."""
        assert self._p.stdin is not None
        self._p.stdin.write(line.rstrip(b"\n") + b"\n")
        self._p.stdin.close()

    def exitcode(self) -> int | None:
        return self._p.poll()

    def terminate(self) -> None:
        if self._p.poll() is None:
            self._p.terminate()

    def kill(self) -> None:
        if self._p.poll() is None:
            self._p.kill()

    def wait(self, timeout: float) -> int | None:
        try:
            code = self._p.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        if self._p.stdin is not None:  # a spare that never got its assignment
            with contextlib.suppress(OSError):
                self._p.stdin.close()
        return code
