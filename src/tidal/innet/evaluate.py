"""End to end: captures -> features -> split -> model -> switches -> metrics.

Contract: `evaluate(...)` loads the committed integer model and its torch weights (or the
given ones), takes the held-out test split of the given captures (or all of them with
`split="all"`), runs the integer reference, the quantized torch model and the switch emulator
on every packet, and reports the figures of the issue. `bit_exact` is true only if all three
agree on every evaluated packet (verdicts and logits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from tidal.core.errors import TidalError
from tidal.innet import dataset, metrics
from tidal.innet.fabric import Fabric
from tidal.innet.mapper import Budget, map_network
from tidal.innet.qmodel import NetNN, torch_predict

WEIGHTS = Path(__file__).parent / "weights"
DEFAULT_MODEL = WEIGHTS / "netnn_both.pt"


def load_model(path: Path = DEFAULT_MODEL) -> NetNN:
    """The committed QAT model (state dict + shape)."""
    if not path.exists():
        raise TidalError(f"model {str(path)!r} not found: run `tidal innet train` first")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    shape = blob["shape"]
    m = NetNN(int(shape[0]), int(shape[1]), int(shape[2]), bool(shape[3]), bool(shape[4]))
    m.load_state_dict(blob["state"])
    return m.eval()


def save_model(m: NetNN, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = torch.tensor([m.c1, m.c2, m.hidden, int(m.use_bytes), int(m.use_timing)])
    torch.save({"state": m.state_dict(), "shape": shape}, path)


def select(
    covert: list[Path] | None, benign: list[Path] | None, split: str, synthetic: int = 0
) -> dataset.PacketSet:
    """The packets to evaluate: the test split (default) or all of the given captures."""
    if not covert and not benign:
        covert, benign = dataset.default_dirs()
    ps = dataset.load(list(covert or []), list(benign or []), synthetic_flows=synthetic)
    if split == "all":
        return ps
    return ps.subset_flows(dataset.split(ps)[split])


def evaluate(
    covert: list[Path] | None = None,
    benign: list[Path] | None = None,
    model_path: Path = DEFAULT_MODEL,
    split: Literal["train", "test", "all"] = "test",
    budget: Budget | None = None,
    first_n: int | None = None,
    masked: bool = True,
    emulate: bool = True,
    synthetic: int = 0,
) -> dict[str, Any]:
    """The figures of the issue for one model on one packet set."""
    ps = select(covert, benign, split, synthetic)
    model = load_model(model_path)
    net = model.to_int()
    x = ps.x if masked else ps.x_raw
    ref = net.predict(x, ps.iat)
    tp = torch_predict(model, x, ps.iat)
    same = bool(np.array_equal(ref, tp))
    mapping = map_network(net, budget or Budget())
    if emulate and net.use_bytes:
        verdict, logits = Fabric(mapping).run_batch(x, ps.iat)
        same = same and bool(np.array_equal(verdict, ref))
        same = same and bool(np.array_equal(logits, net.forward(x, ps.iat)))
    else:
        same = False
    fl = np.array([f.label for f in ps.flows], dtype=np.int64)
    rep = metrics.report(ref, ps.y, ps.flow, fl, first_n)
    benign_rows = ps.y == 0
    out: dict[str, Any] = {
        "packet_accuracy": rep["packet_accuracy"],
        "flow_accuracy": rep["flow_accuracy"],
        "covert_recall": rep["covert_recall"],
        "benign_false_positive_rate": rep["benign_false_positive_rate"],
        "f1": rep["f1"],
        "bit_exact": same,
        "switches": len(mapping.programs),
        "max_stages_per_switch": mapping.max_stages,
        "header_bits": mapping.header_bits,
        "register_bytes": mapping.register_bytes,
        "flows": rep["flows"],
        "packets": rep["packets"],
        "synthetic_benign": ps.synthetic_benign,
        "benign_packet_accuracy": float((ref[benign_rows] == 0).mean())
        if benign_rows.any()
        else 0.0,
        "covert_flows": int(fl.sum()),
        "benign_flows": int((fl == 0).sum()),
        "split": split,
        "masked": masked,
        "strict_asic": mapping.strict_asic,
        "capture_issues": [str(i) for i in ps.issues],
    }
    return out
