"""Golden-file test of the P4_16 emitter (tests/golden/innet/).

Regenerate after an intended change with:
    TIDAL_UPDATE_GOLDEN=1 pytest tests/unit/innet/test_innet_p4.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tidal.innet.intref import IntNet
from tidal.innet.mapper import Budget, map_network
from tidal.innet.p4 import emit_program, write_p4
from tidal.innet.program import Mapping

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "innet"


def tiny_net() -> IntNet:
    """A fixed one-channel network (integers written out, no RNG)."""
    t3 = np.zeros((256, 2), dtype=np.int64)
    t3[150:170, 1] = 40  # gaps of ~40-80 ms push towards covert
    return IntNet(
        w1=np.array([[1, -2, 3, -2, 1]]),
        b1=np.array([5]),
        s1=6,
        w2=np.array([[[2, 1, 0, -1, -2]]]),
        b2=np.array([-3]),
        s2=2,
        w3=np.array([[1] * 7 + [-1] * 7, [-1] * 7 + [1] * 7]),
        b3=np.array([2, -2]),
        t3=t3,
        s3=1,
        w4=np.array([[3, -1], [-2, 4]]),
        b4=np.array([1, 0]),
    )


def tiny_mapping() -> Mapping:
    return map_network(tiny_net(), Budget(strict_asic=False, stages=8))


def test_p4_matches_golden_files(tmp_path: Path) -> None:
    m = tiny_mapping()
    paths = write_p4(m, tmp_path)
    assert len(paths) == len(m.programs) >= 2
    if os.environ.get("TIDAL_UPDATE_GOLDEN"):
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for p in paths:
            (GOLDEN / p.name).write_text(p.read_text())
    golden = sorted(GOLDEN.glob("*.p4"))
    assert [g.name for g in golden] == sorted(p.name for p in paths)
    for g in golden:
        assert (tmp_path / g.name).read_text() == g.read_text(), f"{g.name} differs from golden"


def test_p4_is_deterministic_and_has_the_parts() -> None:
    m = tiny_mapping()
    texts = [emit_program(p) for p in m.programs]
    assert texts == [emit_program(p) for p in tiny_mapping().programs]
    joined = "\n".join(texts)
    for needle in (
        "#include <v1model.p4>",
        "header netnn_t",
        "parser NetnnParser",
        "register<bit<32>>(SLOTS) win_e0;",
        "const entries",
        "V1Switch(",
        "NOT compiled here",
    ):
        assert needle in joined
    strict = map_network(tiny_net(), Budget(strict_asic=True))
    s0 = emit_program(strict.programs[0])
    assert " * w0;" not in s0 and "const entries" in s0  # lookups, no multiplication
