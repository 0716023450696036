"""The generalization studies behind `tidal innet evaluate --logo / --perturb` and the
ablation benchmark.

Contract:
- `logo_study(variants, ...)` runs leave-one-group-out (logo.py) for each training variant
  (train.TrainConfig overrides) and reports per fold and the mean, per flow (the exit
  switch's decision after k packets) and per direction. For the variants in `emulate`, every
  packet that votes (the first k of each flow instance: every packet a flow verdict depends
  on) of every fold also runs through the switch emulator, and `bit_exact` says whether the
  integer reference and the emulator agree on all of them (verdicts and logits). Running all
  235k packets through the Python emulator for every fold would take most of an hour here;
  `tidal innet evaluate` runs every packet of the test split.
- `perturbation_study(...)` re-draws host fingerprints (perturb.py) in the connection test
  split and reports how far the committed model's per-flow recall and FPR move; a control
  model trained on unmasked bytes runs through the same suite, to show what the suite
  catches.
Every figure comes from connections that the evaluated model did not train on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tidal.innet import dataset, logo, metrics, perturb
from tidal.innet.fabric import Fabric
from tidal.innet.flowstate import DEFAULT_K, WARMUP, instance_rank
from tidal.innet.mapper import Budget, map_network
from tidal.innet.train import TrainConfig, byte_view, train_model

# bounded: 9 folds x variants on 2 cores
STUDY_TRAIN: dict[str, Any] = {"epochs": 6, "cap_per_flow": 400}
VARIANTS: dict[str, dict[str, Any]] = {
    # the earlier model's inputs (masking before this issue, no re-drawn timing)
    "bytes_only": {"features": "bytes", "legacy_mask": True, "augment": False},
    "timing_only": {"features": "timing", "augment": False},
    "both": {"features": "both", "legacy_mask": True, "augment": False},
    # this model: channel bytes, per-flow side features, re-drawn timing
    "new": {"features": "channel", "augment": True},
}


def logo_study(
    variants: tuple[str, ...] = ("new",),
    k: int = DEFAULT_K,
    need: int | None = None,
    budget: Budget | None = None,
    emulate: tuple[str, ...] = ("new",),
    ps: dataset.PacketSet | None = None,
    budget_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Leave-one-group-out for each variant (module contract); `budget_overrides` replace
    STUDY_TRAIN's training budget (e.g. fewer epochs on a loaded machine)."""
    if ps is None:
        ps = dataset.load(*dataset.default_dirs())
    out: dict[str, Any] = {"synthetic_benign": ps.synthetic_benign, "k": k}
    for name in variants:
        cfg = TrainConfig(**{**STUDY_TRAIN, **(budget_overrides or {}), **VARIANTS[name]})

        def train_fn(tr: dataset.PacketSet, cfg: TrainConfig = cfg) -> Any:
            return train_model(tr, cfg).to_int()

        def predict_fn(
            net: Any, te: dataset.PacketSet, cfg: TrainConfig = cfg, name: str = name
        ) -> Any:
            x = byte_view(te, cfg)
            pred = net.predict(x, te.side)
            if name not in emulate or not net.use_bytes:
                return pred
            assert te.inst is not None
            vote = np.flatnonzero((te.inst >= 0) & (instance_rank(te.inst) <= k + WARMUP))
            xv, sv = x[vote], te.side[vote]
            verdict, logits = Fabric(map_network(net, budget or Budget())).run_batch(xv, sv)
            exact = np.array_equal(verdict, pred[vote]) and np.array_equal(
                logits, net.forward(xv, sv)
            )
            return pred, exact

        res = logo.run(ps, train_fn, predict_fn, k, need)
        res["pooled"] = pooled(res["folds"])
        out[name] = res
    return out


def pooled(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over all folds (every connection is in exactly one fold's test side)."""
    cov = sum(f["covert_flows"] for f in folds)
    ben = sum(f["benign_flows"] for f in folds)
    tp = sum(round(f["covert_recall"] * f["covert_flows"]) for f in folds)
    fp = sum(round(f["benign_false_positive_rate"] * f["benign_flows"]) for f in folds)
    return {
        "covert_flows": cov,
        "benign_flows": ben,
        "covert_recall": tp / cov if cov else None,
        "benign_false_positive_rate": fp / ben if ben else None,
        "false_positive_flows": fp,
        "missed_covert_flows": cov - tp,
    }


def perturbation_study(
    model_path: Path | None = None,
    k: int = DEFAULT_K,
    need: int | None = None,
    seeds: tuple[int, ...] = (1, 2, 3),
    control: bool = True,
    keep: int = 64,
) -> dict[str, Any]:
    """Fingerprint re-draws on the connection test split (module contract)."""
    from tidal.innet.evaluate import DEFAULT_MODEL, load_model  # evaluate imports studies' peers

    ps = dataset.load(*dataset.default_dirs())
    sp = dataset.split(ps)
    te = ps.subset_flows(sp["test"])
    # every flow's first `keep` packets: the decision after k needs at most WARMUP + k of a
    # flow's packets, and re-extracting all 60k test packets per re-draw takes long here
    rank = instance_rank(te.flow)
    te = dataset.rows_of(te, np.flatnonzero(rank <= keep))
    net = load_model(model_path or DEFAULT_MODEL).to_int()

    def score(pred: np.ndarray, p: dataset.PacketSet) -> dict[str, Any]:
        return metrics.flow_report(pred, p, k, need)

    out: dict[str, Any] = {
        "split": f"test (connection split; no connection shared with training), the first "
        f"{keep} packets of every flow",
        "committed_model": perturb.suite(
            te, lambda p: net.predict(p.x, p.side), dataset.rebuild, score, seeds
        ),
    }
    if control:
        over: dict[str, Any] = {"features": "both", "masked": False, "augment": False}
        cfg = TrainConfig(**{**STUDY_TRAIN, **over})
        ctl = train_model(ps.subset_flows(sp["train"]), cfg).to_int()
        out["control_unmasked_bytes"] = perturb.suite(
            te, lambda p: ctl.predict(p.x_raw, p.side), dataset.rebuild, score, seeds
        )
    out["synthetic_benign"] = ps.synthetic_benign
    return out
