"""Both host languages call the same operator as a service (fraud_flag), over Redis.

    .venv/bin/python examples/cep/fraud_pipeline.py
Starts a private redis-server and a node manager, runs the Flink-style pattern and the SASE
query (examples/cep/fraud.sase) over 20,000 seeded transactions, hot-updates the operator
while events flow, and prints the matches of both hosts (they agree).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tidal.cep import operators, workload
from tidal.cep.manager import DeployDefaults, NodeManager
from tidal.cep.nfa import Pattern
from tidal.cep.redis_server import RedisServer
from tidal.cep.registry import VersionSpec
from tidal.cep.stream import SaseEngine, Stream

HERE = Path(__file__).parent


def main() -> None:
    evs = workload.as_dicts(workload.transactions(20_000, seed=1, cards=200, rate=5))
    with RedisServer() as rs, tempfile.TemporaryDirectory() as root:
        m = NodeManager(root, rs.url, DeployDefaults(codec="json"))
        try:
            src = operators.path("fraud_flag").read_text()
            m.register("fraud_flag", VersionSpec(source=src))
            m.register("fraud_flag", VersionSpec(source=src))
            p = (
                Pattern.begin("small")
                .where(lambda e: e["amount"] < 5)
                .followed_by("large")
                .where(lambda e: e["amount"] > 500)
                .within(600)
            )
            host1 = (
                Stream(m)
                .serverless("fraud_flag")
                .key_by("card")
                .pattern(p, lambda mm: (mm["small"][0]["seq"], mm["large"][0]["seq"]))
                .build()
            )
            out1 = host1.push(evs[:10_000])
            print("hot update:", m.update("fraud_flag", 2))
            out1 += host1.push(evs[10_000:]) + host1.finish()
            host1.close()
            host2 = SaseEngine(m).compile((HERE / "fraud.sase").read_text())
            out2 = host2.run(evs)
            print(f"flink-style host: {len(out1)} matches; SASE host: {len(out2)} matches")
            print(
                "same matches:",
                sorted(out1) == sorted((r["small_seq"], r["large_seq"]) for r in out2),
            )
            for r in out2[:5]:
                print(r)
        finally:
            m.close()


if __name__ == "__main__":
    main()
