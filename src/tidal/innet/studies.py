"""The generalization studies behind `tidal innet evaluate --logo / --perturb` and the
ablation benchmark.

Contract:
- `logo_study(variants, ...)` runs leave-one-group-out (logo.py) for each training variant
  (train.TrainConfig overrides) and reports per fold and the mean, per flow (the exit
  switch's decision after k packets) and per direction. The NESTED variants ("new") choose
  their augmentation candidate (CANDIDATES) and decision window (DECISIONS) per fold by
  nested validation inside that fold's training groups (logo.run_nested); the held-out
  fold is never used to choose. For the variants in `emulate`, every
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
STUDY_TRAIN: dict[str, Any] = {"epochs": 12, "cap_per_flow": 400}
INNER_TRAIN: dict[str, Any] = {"epochs": 6, "cap_per_flow": 200}  # nested selection's fits
VARIANTS: dict[str, dict[str, Any]] = {
    # the earlier model's inputs (masking before this issue, no re-drawn timing)
    "bytes_only": {"features": "bytes", "legacy_mask": True, "augment": False},
    "timing_only": {"features": "timing", "augment": False},
    "both": {"features": "both", "legacy_mask": True, "augment": False},
    # this model: channel bytes, per-flow side features incl. the modulation
    # counters, re-drawn timing and size alphabets; the augmentation candidate and the
    # decision window are chosen per fold by nested validation (CANDIDATES, DECISIONS)
    "new": {"features": "channel", "augment": True},
}
# what nested validation chooses between (logo.select), inside each fold's training groups
CANDIDATES: dict[str, dict[str, Any]] = {
    # size / gap alphabets, channel-removed copies with a protocol preamble, pollers
    "alphabets+pollers": {
        "size_channel": 0.3, "gap_channel": 0.3, "neutral": 0.1, "alternate": 0.1,
        "length_redraw": 0.5, "block": 48, "preamble": 4,
    },
}  # fmt: skip
DECISIONS: tuple[tuple[int, int | None], ...] = ((16, None), (32, None))  # (k, need): 3/4
NESTED = ("new",)


def logo_study(
    variants: tuple[str, ...] = ("new",),
    k: int = DEFAULT_K,
    need: int | None = None,
    budget: Budget | None = None,
    emulate: tuple[str, ...] = ("new",),
    ps: dataset.PacketSet | None = None,
    budget_overrides: dict[str, Any] | None = None,
    inner_max: int = 4,
) -> dict[str, Any]:
    """Leave-one-group-out for each variant (module contract); `budget_overrides` replace
    STUDY_TRAIN's training budget (e.g. fewer epochs on a loaded machine). The NESTED
    variants choose their augmentation candidate and decision window per fold by nested
    validation on that fold's training groups (logo.select); the others use `k`/`need`."""
    if ps is None:
        ps = dataset.load(*dataset.default_dirs())
    out: dict[str, Any] = {"synthetic_benign": ps.synthetic_benign, "k": k}
    for name in variants:
        base = {**STUDY_TRAIN, **(budget_overrides or {}), **VARIANTS[name]}
        fit = _fitter(base, name in emulate, budget)
        if name in NESTED:
            res = logo.run_nested(ps, fit, tuple(CANDIDATES), DECISIONS, inner_max)
        else:
            res = logo.run(ps, lambda tr, f=fit: f(tr, "", False), lambda m, te: m(te), k, need)
        res["pooled"] = pooled(res["folds"])
        if name in NESTED:  # the same models under the nested quorum (an ablation)
            res["pooled_nested_quorum"] = pooled([f["nested_quorum"] for f in res["folds"]])
        out[name] = res
    return out


def _fitter(base: dict[str, Any], emulate: bool, budget: Budget | None) -> logo.Fit:
    """fit(train, candidate, inner) -> predictor, for logo.run / logo.run_nested."""

    def fit(tr: dataset.PacketSet, cand: str, inner: bool) -> Any:
        over = CANDIDATES.get(cand, {})
        cfg = TrainConfig(**{**base, **(INNER_TRAIN if inner else {}), **over})
        net = train_model(tr, cfg).to_int()
        return lambda te: _predict(net, te, cfg, emulate and not inner, budget)

    return fit


def choose(tr: dataset.PacketSet, inner_max: int = 4) -> dict[str, Any]:
    """The augmentation candidate and decision window for a model trained on `tr`, by nested
    validation on `tr`'s own groups (logo.select), as each fold of `logo_study` does."""
    fit = _fitter({**STUDY_TRAIN, **VARIANTS["new"]}, False, None)
    return logo.select(tr, fit, tuple(CANDIDATES), DECISIONS, inner_max)


def _predict(
    net: Any, te: dataset.PacketSet, cfg: TrainConfig, emulate: bool, budget: Budget | None
) -> Any:
    """Verdicts of `net` on `te`; with `emulate`, also whether the switch emulator agrees on
    every packet a flow verdict can depend on (the first DECISIONS' largest k + WARMUP of
    each flow instance)."""
    x = byte_view(te, cfg)
    pred = net.predict(x, te.side)
    if not emulate or not net.use_bytes:
        return pred
    assert te.inst is not None
    k = max(d[0] for d in DECISIONS)
    vote = np.flatnonzero((te.inst >= 0) & (instance_rank(te.inst) <= k + WARMUP))
    xv, sv = x[vote], te.side[vote]
    verdict, logits = Fabric(map_network(net, budget or Budget())).run_batch(xv, sv)
    exact = np.array_equal(verdict, pred[vote]) and np.array_equal(logits, net.forward(xv, sv))
    return pred, exact


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
