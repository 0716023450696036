"""`tidal cep` commands end to end: a query runs; a syntax error is one line, exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TIDAL = str(Path(sys.executable).parent / "tidal")


def test_query_prints_matches() -> None:
    q = (
        "PATTERN SEQ(TXN a, TXN b) WHERE [card] AND a.amount < 5 AND b.amount > 500 "
        "WITHIN 10 min RETURN a.card AS card, a.seq AS s, b.seq AS l"
    )
    r = subprocess.run(
        [TIDAL, "cep", "query", q, "--events", "3000", "--limit", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == 3 and all(row["s"] < row["l"] for row in rows)
    assert "matches" in r.stderr


def test_query_syntax_error_is_one_line_with_position() -> None:
    r = subprocess.run(
        [TIDAL, "cep", "query", "PATTERN SEQ(TXN a,, TXN b)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "line 1, column 19" in r.stderr and "Traceback" not in r.stderr


def test_serve_register_request_and_clean_shutdown(tmp_path) -> None:
    import signal
    import time

    import httpx
    import psutil

    from tidal.cep.redis_server import free_port

    port = free_port()
    env = {**__import__("os").environ, "TIDAL_CEP_TOKEN": "cli-token-0123456789abcdef"}
    url = f"http://127.0.0.1:{port}"
    p = subprocess.Popen(
        [TIDAL, "cep", "serve", "--root", str(tmp_path), "--port", str(port)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        src = Path(__file__).parents[2] / "src" / "tidal" / "cep" / "operators" / "forward.py"

        def cep(*args: str) -> subprocess.CompletedProcess[str]:
            argv = [TIDAL, "cep", *args, "--url", url]
            return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

        r = cep("register", "fwd", str(src))
        assert r.returncode == 0 and json.loads(r.stdout)["version"] == 1, r.stderr
        r = cep("request", "fwd")
        assert json.loads(r.stdout)["store"].startswith("unix://")
        r = cep("request", "nope")
        assert r.returncode == 2 and "unknown operator 'nope'" in r.stderr
        children = psutil.Process(p.pid).children(recursive=True)
        assert children  # the fork server and the operator
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {alive}"
