"""Robustness of the figures to the split: retrain and test on other salts of the same
connection-level, stratified split. Prints one JSON line per salt.

Run: nice -n 10 .venv/bin/python benchmarks/bench_innet_splits.py [salt ...]
"""

from __future__ import annotations

import json
import sys

import numpy as np

from tidal.innet import dataset, metrics
from tidal.innet.train import TrainConfig, train_model


def main(salts: list[str]) -> None:
    cov, ben = dataset.default_dirs()
    ps = dataset.load(cov, ben)
    for salt in salts:
        sp = dataset.split(ps, salt=salt)
        tr, te = ps.subset_flows(sp["train"]), ps.subset_flows(sp["test"])
        net = train_model(tr, TrainConfig()).to_int()
        p = net.predict(te.x, te.iat)
        fl = np.array([f.label for f in te.flows])
        r = metrics.report(p, te.y, te.flow, fl)
        r["benign_packet_accuracy"] = float((p[te.y == 0] == 0).mean())
        r["covert_test_files"] = sorted({f.file.rsplit("/", 1)[-1] for f in te.flows if f.label})
        print(json.dumps({"salt": salt, **r}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["alt-1", "alt-2", "alt-3"])
