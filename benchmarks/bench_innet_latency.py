"""Per-packet decision latency: the switch chain (modeled ASIC latency from the mapping's hops
and stages) vs the CPU path through Tidal's gateway (measured over loopback HTTP).

Prints one JSON object. Run: .venv/bin/python benchmarks/bench_innet_latency.py [N]
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from tidal.bench.innet_baseline import emulator_per_hop_ms, measure_cpu_path, modeled_switch_path
from tidal.innet import dataset
from tidal.innet.evaluate import load_model
from tidal.innet.mapper import map_network


def main(n: int = 200) -> dict[str, Any]:
    net = load_model().to_int()
    mapping = map_network(net)
    cov, ben = dataset.default_dirs()
    ps = dataset.load(cov, ben)
    te = ps.subset_flows(dataset.split(ps)["test"])
    rows = np.random.default_rng(0).choice(len(te), size=min(n, len(te)), replace=False)
    x, iat = te.x[rows], te.iat[rows]
    cpu = measure_cpu_path(net, x, iat)
    agree = bool(np.array_equal(np.asarray(cpu.pop("verdicts")), net.predict(x, iat)))
    return {
        "packets": len(rows),
        "switch_path_modeled": modeled_switch_path(mapping),
        "emulator_python_ms_per_hop": emulator_per_hop_ms(mapping, x[:50], iat[:50]),
        "cpu_gateway_path": cpu,
        "cpu_verdicts_equal_switch_verdicts": agree,
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200), indent=1))
