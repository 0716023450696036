"""`tidal simulate` end to end: every registered policy, named windows, and bad input
(one-line error naming the value, exit code 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tidal.core.shared import repo_root
from tidal.planners import available

TIDAL = [sys.executable, "-m", "tidal.cli.main"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "400"}
    return subprocess.run([*TIDAL, *args], capture_output=True, text=True, timeout=240, env=env)


def test_simulate_json_for_every_registered_policy(tmp_path: Path) -> None:
    from tidal.cli.main import app

    policies = available()
    assert {"themis", "sponge", "hpa", "vpa", "rayserve", "static"} <= set(policies)
    res = CliRunner().invoke(
        app,
        [
            "simulate",
            "--trace",
            "synthetic:spike:90:5:60",
            "--policies",
            ",".join(policies),
            "--pipeline",
            "one-stage",
            "--slo-ms",
            "750",
            "--forecast",
            "max",
            "--json",
            "--out",
            str(tmp_path / "out"),
            "--plot",
            str(tmp_path / "p.png"),
        ],  # fmt: skip
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout.strip().splitlines()[-1])
    rows = data["results"]
    assert [r["policy"] for r in rows] == policies
    for r in rows:
        assert {"policy", "slo_violation_rate", "core_seconds", "mean_accuracy", "p99_ms",
                "requests"} <= set(r)  # fmt: skip
        assert r["requests"] == rows[0]["requests"] > 0
        assert 0 <= r["slo_violation_rate"] <= 1 and r["core_seconds"] > 0
        assert (tmp_path / "out" / f"{r['policy']}.csv").is_file()
        assert (tmp_path / "out" / f"{r['policy']}-series.csv").is_file()
    assert (tmp_path / "p.png").stat().st_size > 10_000


@pytest.mark.shared
@pytest.mark.parametrize(
    "window", ["bursty", "steady-low", "steady-high", "fluctuating", "infadapter", "sponge"]
)
def test_simulate_named_windows(window: str) -> None:
    from tidal.cli.main import app

    res = CliRunner().invoke(
        app,
        [
            "simulate",
            "--trace",
            f"twitter:{window}",
            "--duration",
            "30",
            "--policies",
            "static,hpa",
            "--json",
        ],  # fmt: skip
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout.strip().splitlines()[-1])["results"]
    assert len(rows) == 2 and rows[0]["requests"] > 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--trace", "twitter:nope"], "unknown twitter window 'nope'"),
        pytest.param(  # the range is checked against the real trace's length
            ["--trace", "twitter:1899000-1900000"], "out of range", marks=pytest.mark.shared
        ),
        (["--policies", "static", "--cores-per-node", "0.5"], "can never fit"),
        (["--policies", "magic"], "unknown policy 'magic'"),
    ],
)
def test_bad_input_exits_2_naming_it(args: list[str], needle: str) -> None:
    p = cli("simulate", "--duration", "5", *args)
    assert p.returncode == 2, p.stderr + p.stdout
    assert needle in p.stderr
    assert "Traceback" not in p.stderr


def test_missing_trace_file_names_path_and_alternative(tmp_path: Path) -> None:
    # An empty shared dir (no traces/twitter file) with the real one hidden.
    empty = tmp_path / "shared"
    (empty / "traces").mkdir(parents=True)
    code = (
        "import sys, tidal.core.shared as s;"
        f"s._REPO_ROOT = __import__('pathlib').Path({str(tmp_path / 'repo')!r});"
        "from tidal.cli.main import main;"
        "sys.argv=['tidal','simulate','--trace','twitter:bursty','--pipeline',"
        f"{str(repo_root() / 'examples/pipelines/one-stage.yaml')!r}];"
        "main()"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
        cwd=tmp_path, env={"TIDAL_SHARED": str(empty), "PATH": "/usr/bin:/bin", "COLUMNS": "400"},
    )  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert "twitter_2021-08_per_second.txt" in p.stderr and "synthetic:step" in p.stderr
