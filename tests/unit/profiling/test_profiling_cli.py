"""CLI of the models area: catalog listing, bad input -> one-line error and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _tidal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidal.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "500"},  # rich wraps at 80 columns without a TTY
    )


def test_models_list_shows_two_families_and_a_trained_one() -> None:
    r = _tidal("models", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert {"image-classification", "text-classification", "digits"} <= {
        row["task"] for row in rows.values()
    }
    assert rows["digits-cnn"]["label"] == "trained here" and rows["digits-cnn"]["accuracy"] > 0.9
    assert rows["resnet50"]["label"] == "latency-faithful, published accuracy"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["profile", "resnet9"], "unknown variant 'resnet9'"),
        (["profile", "noop", "--cores", "64"], "cores 64.0"),
        (["profile", "noop", "--batches", "0,2"], "batch size 0"),
        (["profile", "noop", "--cores", "x"], "cores 'x'"),
    ],
)
def test_bad_profile_arguments_exit_2_with_one_line(args: list[str], needle: str) -> None:
    r = _tidal(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_corrupt_profile_file_exits_2(tmp_path) -> None:
    p = tmp_path / "broken.json"
    p.write_text('{"format_version": 1, "variants": ')
    r = _tidal("profile", "--show", str(p))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "corrupt profile file" in r.stderr
