"""Ablations of the in-network detector on the leave-one-group-out splits.

Every variant is retrained on each fold (bounded: studies.STUDY_TRAIN, single thread) and
tested on the fold's held-out covert group and benign families (logo.py), per flow with the
exit switch's decision after k packets:
- bytes_only: the bytes with the earlier masking (TTL, window, options left visible);
- timing_only: the gap, the previous gap and their change (no bytes);
- both: NetNN's input (earlier masking + the gap), as committed before this issue;
- new: channel bytes (features.FIELD_POLICY) + every per-flow side feature (the modulation
  counters too), trained with re-drawn timing and size alphabets; its augmentation candidate
  and decision window are chosen per fold by nested validation inside the fold's training
  groups (studies.CANDIDATES, studies.DECISIONS; the held-out fold is never used to choose);
  every packet a flow verdict can depend on also runs through the switch emulator
  (bit_exact).
Prints the load average at start and end, one JSON line per variant as it completes, a
per-fold table (recall, FPR, what nested validation chose), a summary table, then one JSON
object.
Run: nice -n 10 .venv/bin/python benchmarks/bench_innet_ablation.py [--epochs N] [--cap N]
[variant ...]
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from tidal.innet import dataset, studies


def main(variants: tuple[str, ...], budget: dict[str, Any] | None = None) -> dict[str, Any]:
    load0 = os.getloadavg()
    print(f"load average {load0[0]:.1f}; budget {budget or studies.STUDY_TRAIN}", flush=True)
    ps = dataset.load(*dataset.default_dirs())
    res: dict[str, Any] = {}
    for v in variants:  # one variant at a time, printed as it completes
        r = studies.logo_study(variants=(v,), emulate=("new",), ps=ps, budget_overrides=budget)
        res[v] = r[v]
        res["synthetic_benign"] = r["synthetic_benign"]
        print(json.dumps({"variant": v, **r[v]}, default=str), flush=True)
    res["loadavg_start"], res["loadavg_end"] = load0, os.getloadavg()
    print(f"load average at end {res['loadavg_end'][0]:.1f}")
    for v in variants:
        for f in res[v]["folds"]:
            sel = f.get("selected") or {}
            fx = f.get("nested_quorum")
            was = (
                f"  (nested quorum need={fx['need']}: recall {fx['covert_recall']:.2f} FPR"
                f" {fx['benign_false_positive_rate']:.4f})"
                if fx
                else ""
            )
            print(
                f"{v:13s} {f['fold'][:40]:40s} covert {f['covert_flows']:2d} recall"
                f" {f['covert_recall']:.2f}  benign {f['benign_flows']:3d} FPR"
                f" {f['benign_false_positive_rate']:.4f}  return flagged"
                f" {f['return_flagged_rate']:.2f}  chosen {sel.get('candidate', '-')}"
                f" k={sel.get('k', '-')} need={f.get('need', '-')}"
                f"  bit_exact {f.get('bit_exact', '-')}{was}"
            )
    print("variant       mean recall  mean FPR  min recall  max FPR  pooled recall  pooled FPR")
    for v in variants:
        m, p = res[v]["mean"], res[v]["pooled"]
        print(
            f"{v:13s} {m['covert_recall']:11.3f} {m['benign_false_positive_rate']:9.4f}"
            f" {m['min_covert_recall']:11.3f} {m['max_benign_false_positive_rate']:8.4f}"
            f" {p['covert_recall']:14.3f} {p['benign_false_positive_rate']:11.4f}"
        )
        if "mean_nested_quorum" in res[v]:
            m, p = res[v]["mean_nested_quorum"], res[v]["pooled_nested_quorum"]
            print(
                f"{v + ' (nq)':13s} {m['covert_recall']:11.3f}"
                f" {m['benign_false_positive_rate']:9.4f} {m['min_covert_recall']:11.3f}"
                f" {m['max_benign_false_positive_rate']:8.4f}"
                f" {p['covert_recall']:14.3f} {p['benign_false_positive_rate']:11.4f}"
            )
    return res


if __name__ == "__main__":
    args = sys.argv[1:]
    over: dict[str, Any] = {}
    while args and args[0].startswith("--"):  # --epochs N / --cap N: a smaller budget
        key = {"--epochs": "epochs", "--cap": "cap_per_flow"}[args[0]]
        over[key], args = int(args[1]), args[2:]
    names = tuple(args) or ("new", "both", "timing_only", "bytes_only")
    print(json.dumps(main(names, over or None), default=str))
