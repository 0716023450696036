"""`file:PATH` traces: rates or timestamps, compress, scale-to-peak, errors named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tidal.core.errors import TidalError
from tidal.workload import load_trace


def test_rates_file_with_comments_and_csv_rows(tmp_path: Path) -> None:
    f = tmp_path / "r.txt"
    f.write_text("# requests per second\n3\n5, extra\n\n0\n2\n")
    assert load_trace(f"file:{f}").tolist() == [3.0, 5.0, 0.0, 2.0]


def test_timestamps_are_binned_per_second(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("\n".join(["100.1", "100.5", "101.2", "103.9"]))
    assert load_trace(f"file:{f}").tolist() == [2.0, 1.0, 0.0, 1.0]
    ms = tmp_path / "ms.txt"
    ms.write_text("\n".join(["1000", "1500", "2600"]))
    out = load_trace(f"file:{ms},format=timestamps,unit=ms")
    assert out.tolist() == [2.0, 1.0]


def test_compress_and_scale_to_peak(tmp_path: Path) -> None:
    f = tmp_path / "r.txt"
    f.write_text("\n".join(str(x) for x in [1, 2, 3, 4, 5, 6]))
    assert load_trace(f"file:{f},compress=3").tolist() == [6.0, 15.0]  # every request kept
    assert load_trace(f"file:{f}", compress=2).tolist() == [3.0, 7.0, 11.0]
    scaled = load_trace(f"file:{f},scale_to_peak=60")
    assert scaled.max() == 60.0 and scaled.tolist() == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    both = load_trace(f"file:{f}", compress=3, peak=30.0)
    assert both.tolist() == [12.0, 30.0]
    assert np.all(load_trace(f"file:{f}", peak=1.0) <= 1.0)


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(TidalError, match="trace file not found"):
        load_trace(f"file:{tmp_path / 'nope.txt'}")
    bad = tmp_path / "bad.txt"
    bad.write_text("1\nx\n")
    with pytest.raises(TidalError, match=r"bad.txt:2: not a number: 'x'"):
        load_trace(f"file:{bad}")
    ok = tmp_path / "ok.txt"
    ok.write_text("1\n2\n")
    with pytest.raises(TidalError, match="file trace option 'speed=2'"):
        load_trace(f"file:{ok},speed=2")
    with pytest.raises(TidalError, match="scale_to_peak must be > 0"):
        load_trace(f"file:{ok},scale_to_peak=0")
