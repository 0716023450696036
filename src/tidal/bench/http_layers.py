"""`tidal bench http-layers`: HTTP server layers under the same wrk load and the same app work.

Every layer runs the same noop endpoint: parse the OIP v2 JSON body (64 floats) into numpy,
multiply by 1.0, answer OIP v2 JSON (`tidal.bench.dataplane_apps._decode/_encode`). Layers:

- `uvicorn`: the bare ASGI app on uvicorn + httptools + uvloop (the gateway's layer before
  this issue; the issue's "bare ASGI" limit);
- `tidal_server`: the same ASGI app on `tidal.dataplane.server` (httptools on uvloop, with
  the timeouts and the connection cap on);
- `granian_asgi`, `granian_rsgi`: granian (Rust HTTP, one worker, one runtime thread, uvloop),
  the ASGI app and an RSGI version of it; granian lives in `.venv-peers/granian`
  (`--install-granian`);
- `raw_httptools`: an asyncio.Protocol on uvloop with httptools and the same parse, calling
  the handler directly (no ASGI): the limit of any Python layer here.

Each layer is one process (one core for the server), measured with `wrk -t1` at 16
connections and at 1 connection, and pipelined (`--pipeline 16` Lua) for the layers that
support it, in rotated order. Prints the load average at start and end, and ratios against
uvicorn measured in the same run. Figures only; nothing is asserted.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from tidal.bench.dataplane_apps import _decode, _encode, bare_app

__all__ = ["LAYERS", "bare_app", "rsgi_app", "run_layers", "serve_raw"]

LAYERS = ("uvicorn", "tidal_server", "granian_asgi", "granian_rsgi", "raw_httptools")
_HDR = [(b"content-type", b"application/json")]


def _noop(body: bytes) -> bytes:
    x = _decode(body, None)
    return _encode(x * 1.0, "noop")


async def rsgi_app(scope: Any, proto: Any) -> None:
    """The bare app for granian's RSGI interface."""
    body = await proto()
    proto.response_bytes(200, [("content-type", "application/json")], _noop(body))


class _RawProto(asyncio.Protocol):
    """httptools on uvloop, handler called inline: no ASGI, keep-alive, pipelining."""

    def __init__(self) -> None:
        import httptools

        self.p = httptools.HttpRequestParser(self)
        self.t: asyncio.Transport | None = None
        self.body: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        self.p.feed_data(data)

    def on_message_begin(self) -> None:
        self.body = []

    def on_body(self, b: bytes) -> None:
        self.body.append(b)

    def on_message_complete(self) -> None:
        out = _noop(b"".join(self.body))
        assert self.t is not None
        self.t.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(out), out)
        )


def serve_raw(port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(_RawProto, "127.0.0.1", port, backlog=4096)
        print("READY", flush=True)
        async with srv:
            await srv.serve_forever()

    uvloop.run(main())


def serve_tidal(port: int) -> None:
    import uvloop

    from tidal.dataplane.server import ServerLimits, serve_async

    uvloop.run(
        serve_async(
            bare_app,
            "127.0.0.1",
            port,
            ServerLimits(),
            on_started=lambda _n: print("READY", flush=True),
        )
    )


def _granian() -> Path | None:
    from tidal.bench.peers import peers_dir

    g = peers_dir() / "granian" / "bin" / "granian"
    return g if g.exists() else None


def install_granian() -> None:
    from tidal.bench.peers import install_peer

    install_peer("granian")


def _cmd(layer: str, port: int) -> tuple[list[str], dict[str, str]] | None:
    py = sys.executable
    src = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": src}
    me = "tidal.bench.http_layers"
    if layer == "uvicorn":
        return [py, "-m", "uvicorn", "tidal.bench.dataplane_apps:bare_app", "--loop", "uvloop",
                "--http", "httptools", "--no-access-log", "--log-level", "warning",
                "--host", "127.0.0.1", "--port", str(port)], env  # fmt: skip
    if layer in ("tidal_server", "raw_httptools"):
        return [py, "-m", me, layer, str(port)], env
    g = _granian()
    if g is None:
        return None
    target = "tidal.bench.dataplane_apps:bare_app" if layer == "granian_asgi" else f"{me}:rsgi_app"
    iface = "asgi" if layer == "granian_asgi" else "rsgi"
    return [str(g), "--interface", iface, "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--runtime-threads", "1", "--loop", "uvloop", "--no-ws",
            "--log-level", "warning", target], env  # fmt: skip


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    import socket

    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} not listening after {timeout:.0f} s")


def _lua(tmp: Path, pipeline: int) -> Path:
    body = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [1, 64],
                    "datatype": "FP32",
                    "data": [round(i / 64, 4) for i in range(64)],
                }
            ]
        }
    ).decode()
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = [[{body}]]",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    if pipeline > 1:
        lines += [
            "init = function(args)",
            "  local r = {}",
            f"  for i = 1, {pipeline} do r[i] = wrk.format() end",
            "  req = table.concat(r)",
            "end",
            "request = function() return req end",
        ]
    p = tmp / f"noop-p{pipeline}.lua"
    p.write_text("\n".join(lines) + "\n")
    return p


def run_layers(
    duration: float = 8.0,
    connections: int = 16,
    layers: tuple[str, ...] = LAYERS,
    rotate: int | None = None,
    pipeline: int = 16,
    echo: Any = print,
) -> dict[str, Any]:
    """Measure every layer (see the module docstring); return the figures."""
    from tidal.bench.dataplane import _free_port, _wrk

    load0 = os.getloadavg()
    echo(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} (2 cores shared)")
    k = rotate if rotate is not None else int(time.time() // 60) % len(layers)
    order = list(layers[k:] + layers[:k])
    res: dict[str, Any] = {"layers": {}, "skipped": {}, "order": order}
    with tempfile.TemporaryDirectory(prefix="tidal-layers-") as d:
        tmp = Path(d)
        lua1, luap = _lua(tmp, 1), _lua(tmp, pipeline)
        for layer in order:
            port = _free_port()
            spec = _cmd(layer, port)
            if spec is None:
                res["skipped"][layer] = "granian not installed: --install-granian"
                echo(f"[{layer}] skipped: granian not installed (tidal bench http-layers "
                     "--install-granian puts it in .venv-peers/granian)")  # fmt: skip
                continue
            cmd, env = spec
            log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finally
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
            try:
                _wait_port(port, proc)
                url = f"http://127.0.0.1:{port}/v2/models/noop/infer"
                _wrk(url, lua1, connections, 2.0)
                fig = _wrk(url, lua1, connections, duration)
                one = _wrk(url, lua1, 1, duration / 2)
                row: dict[str, Any] = {
                    "rps": fig["rps"],
                    "p50_ms": fig["p50_ms"],
                    "p99_ms": fig["p99_ms"],
                    "non_2xx": fig["non_2xx"],
                    "c1_rps": one["rps"],
                    "c1_p50_ms": one["p50_ms"],
                }
                if pipeline > 1:
                    try:
                        pip = _wrk(url, luap, connections, duration / 2)
                        row["pipelined_rps"] = pip["rps"]
                    except Exception as e:  # a layer that breaks on pipelining says so
                        row["pipelined_rps"] = f"failed: {e}"[:120]
                res["layers"][layer] = row
                echo(f"[{layer}] {row}")
            except Exception as e:
                log.seek(0)
                res["skipped"][layer] = f"{e}: {log.read()[-500:].decode(errors='replace')}"
                echo(f"[{layer}] failed: {res['skipped'][layer]}")
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                log.close()
    base = res["layers"].get("uvicorn", {}).get("rps")
    if base:
        res["vs_uvicorn"] = {
            k: round(v["rps"] / base, 2) for k, v in res["layers"].items() if "rps" in v
        }
    load1 = os.getloadavg()
    echo(f"load average at end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    res["loadavg"] = [round(load0[0], 2), round(load1[0], 2)]
    return res


if __name__ == "__main__":  # pragma: no cover - started by run_layers
    if sys.argv[1] == "raw_httptools":
        serve_raw(int(sys.argv[2]))
    elif sys.argv[1] == "tidal_server":
        serve_tidal(int(sys.argv[2]))
    else:
        print("usage: python -m tidal.bench.http_layers raw_httptools|tidal_server PORT")
        sys.exit(2)
