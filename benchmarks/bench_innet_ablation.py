"""Ablations of the in-network detector: what does it rely on, and where does it fail?

Trains (bounded, single thread, nice it) and evaluates on the held-out test split:
- features: bytes only / timing only / both, each on masked and on unmasked bytes;
- the unquantized float model and the binarized XNOR-popcount variant (masked, both): the
  accuracy cost of each step float -> int8 -> binary;
- cross-technique: trained without one covert technique (size modulation, then timing
  channels), tested on that technique's flows plus the benign test flows.
Prints one JSON object. Run: nice -n 10 .venv/bin/python benchmarks/bench_innet_ablation.py
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import torch

from tidal.innet import dataset, metrics
from tidal.innet.binary import BinNetNN
from tidal.innet.qmodel import NetNN
from tidal.innet.train import TrainConfig, train_model


def _report(pred: np.ndarray, ps: dataset.PacketSet) -> dict[str, Any]:
    fl = np.array([f.label for f in ps.flows], dtype=np.int64)
    r = metrics.report(pred, ps.y, ps.flow, fl)
    r["benign_packet_accuracy"] = float((pred[ps.y == 0] == 0).mean()) if (ps.y == 0).any() else 0
    wrong = metrics.flow_verdicts(pred, ps.flow, len(ps.flows)) != fl
    r["wrong_flows"] = sorted({ps.flows[i].file.rsplit("/", 1)[-1] for i in np.flatnonzero(wrong)})
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}


def _float_predict(m: NetNN, ps: dataset.PacketSet) -> np.ndarray:
    with torch.no_grad():
        lg = m(torch.from_numpy(ps.x.astype(np.float32)), torch.from_numpy(ps.iat.astype(np.int64)))
    return (lg[:, 1] > lg[:, 0]).numpy().astype(np.int64)


def main(epochs: int = 8) -> dict[str, Any]:
    cov, ben = dataset.default_dirs()
    ps = dataset.load(cov, ben)
    sp = dataset.split(ps)
    tr, te = ps.subset_flows(sp["train"]), ps.subset_flows(sp["test"])
    out: dict[str, Any] = {"train_flows": len(tr.flows), "test_flows": len(te.flows)}
    for masked in (True, False):
        for feats in ("both", "bytes", "timing"):
            cfg = TrainConfig(features=feats, masked=masked, epochs=epochs)  # type: ignore[arg-type]
            net = train_model(tr, cfg).to_int()
            x = te.x if masked else te.x_raw
            out[f"{feats}_{'masked' if masked else 'unmasked'}"] = _report(
                net.predict(x, te.iat), te
            )
    fm = NetNN()
    fm.quantize = False
    fm = train_model(tr, TrainConfig(epochs=epochs), model=fm)
    out["float_both_masked"] = _report(_float_predict(fm, te), te)
    torch.manual_seed(0)
    b = train_model(tr, TrainConfig(epochs=epochs, lr=1e-2), model=BinNetNN()).to_ref()
    out["binarized_both_masked"] = _report(b.predict(te.x, te.iat), te)
    for tech in ("Size", "TCC"):
        held = np.array(
            [f.label == 1 and f.file.rsplit("/", 1)[-1].startswith(tech) for f in ps.flows]
        )
        train_ids = np.setdiff1d(sp["train"], np.flatnonzero(held))
        test_ids = np.union1d(
            np.flatnonzero(held), [i for i in sp["test"] if ps.flows[i].label == 0]
        )
        tr2, te2 = ps.subset_flows(train_ids), ps.subset_flows(test_ids)
        for feats in ("both", "timing", "bytes"):
            net = train_model(tr2, TrainConfig(features=feats, epochs=epochs)).to_int()  # type: ignore[arg-type]
            out[f"unseen_{tech}_{feats}"] = _report(net.predict(te2.x, te2.iat), te2)
    return out


if __name__ == "__main__":
    ep = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    print(json.dumps(main(ep), indent=1))
