"""A fork server for Python operators: imports once, forks each operator in milliseconds.

Run as ``python -m tidal.cep.forkserver``. It imports `PRELOAD` (numpy, redis, httpx, the
runtime), then reads one JSON object per line on stdin, ``{"env": {...}, "plan": {...},
"network": bool}``, forks a child that applies the sandbox `plan` (`tidal.cep.sandbox`) and
runs the operator runtime with exactly that environment, and writes ``{"pid": n}``. When a child
ends it writes ``{"exit": pid, "code": c}``. It exits when stdin closes, terminating its
children. The protocol carries only JSON from the parent process (never network input).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import sys

PRELOAD = [
    "numpy",
    "redis",
    "httpx",
    # httpx imports its transport lazily, on the first Client: a sandboxed operator (a user
    # that may not read the virtualenv, e.g. under a mode-700 directory) could not
    "httpcore",
    "h11",
    "tidal.cep.sdk.python.runtime",
    "tidal.cep.sockstore",
    "tidal.cep.sandbox",
    # stdlib modules imported lazily (redis' host names need idna) or commonly by operators:
    # a sandboxed operator may not be able to read the interpreter's own directory
    "encodings.idna",
    "statistics",
    "datetime",
    "decimal",
    "heapq",
    "bisect",
    "random",
    "hashlib",
    "zlib",
    "ssl",
    "importlib.readers",
    "importlib.resources.readers",
    "http.client",
    "urllib.request",
    "tidal.cep.operators.card_count",
    "tidal.cep.operators.oip_model",
    "tidal.cep.operators.small_large",
]


def _child(env: dict[str, str], plan: dict[str, object], network: bool) -> int:
    from tidal.cep import sandbox
    from tidal.cep.sdk.python.runtime import main

    os.environ.clear()  # the operator's whole environment is `env` (no inherited secret)
    os.environ.update(env)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        sandbox.apply(plan, network)
    except OSError as e:
        print(f"tidal-cep sandbox failed: {e}", file=sys.stderr, flush=True)
        return 126

    try:
        return main(env)
    except Exception as e:  # the operator's failure ends the process, as a crash would
        print(f"tidal-cep operator failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1


def warm() -> None:
    """Touch numpy's lazily imported paths (npz save/load, sorting, ufunc.at) once, so a
    forked operator does not pay those imports on its critical hand-over path."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, a=np.arange(8))
    with np.load(io.BytesIO(buf.getvalue()), allow_pickle=False) as z:
        a = np.array(z["a"])
    np.add.at(a, np.argsort(a, kind="stable"), 1)
    np.maximum.accumulate(a)


def serve() -> None:
    for m in PRELOAD:
        importlib.import_module(m)
    warm()
    out = sys.stdout
    inp = sys.stdin.buffer
    children: set[int] = set()
    buf = b""
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    while True:
        r, _, _ = select.select([inp], [], [], 0.005)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            children.discard(pid)
            out.write(json.dumps({"exit": pid, "code": os.waitstatus_to_exitcode(status)}) + "\n")
            out.flush()
        if not r:
            continue
        chunk = os.read(inp.fileno(), 1 << 16)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            req = json.loads(line)
            pid = os.fork()
            if pid == 0:
                os.close(inp.fileno())
                os.dup2(2, 1)  # the child's stdout goes to stderr, not into our protocol
                env = {str(k): str(v) for k, v in req["env"].items()}
                os._exit(_child(env, dict(req.get("plan") or {}), bool(req.get("network"))))
            children.add(pid)
            out.write(json.dumps({"pid": pid}) + "\n")
            out.flush()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


if __name__ == "__main__":
    serve()
