"""Robustness of the figures to the connection split: retrain and test on other salts of the
same connection-level, stratified split (per flow, decision after k packets). Prints one JSON
line per salt. These splits share tool, host and link with training (see the
leave-one-group-out study for generalization).

Run: nice -n 10 .venv/bin/python benchmarks/bench_innet_splits.py [salt ...]
"""

from __future__ import annotations

import json
import sys

from tidal.innet import dataset, metrics
from tidal.innet.train import TrainConfig, train_model


def main(salts: list[str]) -> None:
    cov, ben = dataset.default_dirs()
    ps = dataset.load(cov, ben)
    for salt in salts:
        sp = dataset.split(ps, salt=salt)
        tr, te = ps.subset_flows(sp["train"]), ps.subset_flows(sp["test"])
        net = train_model(tr, TrainConfig()).to_int()
        r = metrics.flow_report(net.predict(te.x, te.side), te, 16)
        r.pop("per_direction")
        print(json.dumps({"salt": salt, **r}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["alt-1", "alt-2", "alt-3"])
