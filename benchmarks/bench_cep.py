"""CEP benchmark (same as `tidal cep bench --json`): prints one JSON row per backend.

.venv/bin/python benchmarks/bench_cep.py [native,embedded,redis,redis-faithful] [events]
"""

from __future__ import annotations

import json
import sys

from tidal.bench.cep import run

if __name__ == "__main__":
    backends = sys.argv[1] if len(sys.argv) > 1 else "native,embedded,redis,redis-faithful"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 500_000
    print(json.dumps(run(backends.split(","), n=n), indent=1))
