"""Leave-one-group-out evaluation: train without a group of captures, test on that group.

Groups (from the capture names, `groups_of`):
- covert captures: technique (file-name prefix: SCC storage, TCC timing, Size size
  modulation), timing parameters (the numbers / `..ms` tokens: 40, 40_80, 300ms) and message
  (the tokens between: ABABAB, Faust, Faust_GZ, ...);
- benign captures: protocol family (the folder under benign-zeek, or the file's protocol
  for top-level files; the NeFiAS browsing capture is its own family).

Folds: one per distinct covert hold-out (a technique, timing or message group; groups that
hold out exactly the same connections are one fold listed under every name). The benign
families are dealt round-robin over the folds, so every fold also holds out whole benign
families: each fold's recall and FPR are measured only on connections that no training
capture shares. Each fold trains a fresh model (train.TrainConfig) on everything else.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tidal.innet import dataset, metrics
from tidal.innet.dataset import BENIGN, PacketSet
from tidal.innet.flowstate import DEFAULT_K, WARMUP, default_need, instance_rank


@dataclass(frozen=True)
class Fold:
    """One hold-out: the group names and the connections held out."""

    names: tuple[str, ...]
    benign_families: tuple[str, ...]
    connections: frozenset[str]


def _base(file: str) -> str:
    name = file.rsplit("/", 1)[-1]
    for suf in (".gz", ".pcapng", ".pcap", ".cap"):
        name = name.removesuffix(suf)
    return name


def groups_of(f: dataset.FlowInfo) -> dict[str, str]:
    """The groups of a flow's capture (module docstring)."""
    if f.label == BENIGN:
        parts = f.file.split("/")
        if parts[0] == "benign-zeek" and len(parts) > 2:
            fam = parts[1]
        elif parts[0] == "benign-zeek":
            fam = re.split(r"[-_.]", parts[1])[0]
        elif len(parts) > 1:
            fam = parts[-2]
        else:
            fam = "benign"
        return {"family": fam}
    toks = _base(f.file).split("_")
    tech = toks[0]
    timing = [t for t in toks[1:] if re.fullmatch(r"\d+(ms)?", t)]
    if any(t.endswith("ms") for t in timing):  # e.g. Size_Mod_1000_1001_300ms_...: the gap
        at = next(i for i, t in enumerate(toks) if t.endswith("ms") and t[:-2].isdigit())
        timing = [toks[at]]
        msg = [t for t in toks[1:at] if t.isdigit()] or ["none"]  # the sizes it alternates
    else:
        msg = [t for t in toks[1:] if not re.fullmatch(r"\d+", t)]
    return {
        "technique": tech,
        "timing": "_".join(timing) or "none",
        "message": "_".join(msg) or "none",
    }


def folds(ps: PacketSet) -> list[Fold]:
    """The folds of `ps` (module docstring), deterministic."""
    cov: dict[str, set[str]] = {}
    fam: dict[str, set[str]] = {}
    for f in ps.flows:
        g = groups_of(f)
        if f.label == BENIGN:
            fam.setdefault(g["family"], set()).add(f.connection)
        else:
            for kind in ("technique", "timing", "message"):
                cov.setdefault(f"{kind}={g[kind]}", set()).add(f.connection)
    by_conns: dict[frozenset[str], list[str]] = {}
    for name in sorted(cov):
        by_conns.setdefault(frozenset(cov[name]), []).append(name)
    holds = sorted(by_conns.items(), key=lambda kv: kv[1][0])
    families = sorted(fam)
    n = max(1, len(holds))
    out = []
    for i in range(n):
        fams = tuple(families[j] for j in range(i, len(families), n))
        conns = set(holds[i][0]) if holds else set()
        for fa in fams:
            conns |= fam[fa]
        names = tuple(holds[i][1]) if holds else ("benign-only",)
        out.append(Fold(names, fams, frozenset(conns)))
    return out


def fold_split(ps: PacketSet, fold: Fold) -> tuple[np.ndarray, np.ndarray]:
    """(train flow ids, test flow ids) of one fold."""
    held = np.array([f.connection in fold.connections for f in ps.flows], dtype=bool)
    ids = np.arange(len(ps.flows))
    return ids[~held], ids[held]


def score(
    pred: np.ndarray, ps: PacketSet, k: int = DEFAULT_K, need: int | None = None
) -> dict[str, Any]:
    """Flow-level (decision after k packets) and per-direction figures of one packet set."""
    return metrics.flow_report(pred, ps, k, need)


def run(
    ps: PacketSet,
    train_fn: Any,
    predict_fn: Any,
    k: int = DEFAULT_K,
    need: int | None = None,
    only: list[int] | None = None,
) -> dict[str, Any]:
    """Train with `train_fn(train_set)`, predict with `predict_fn(model, test_set)` per fold.

    Returns per-fold reports and their mean (covert recall, benign FPR, flow accuracy).
    `predict_fn` may return (verdicts, bit_exact) to report bit-exactness per fold.
    """
    per: list[dict[str, Any]] = []
    for i, fold in enumerate(folds(ps)):
        if only is not None and i not in only:
            continue
        tr_ids, te_ids = fold_split(ps, fold)
        tr, te = ps.subset_flows(tr_ids), ps.subset_flows(te_ids)
        model = train_fn(tr)
        res = predict_fn(model, te)
        per.append(_fold_report(res, te, fold, k, need))
    return {"folds": per, "mean": mean_of(per), "k": k}


def _fold_report(res: Any, te: PacketSet, fold: Fold, k: int, need: int | None) -> dict[str, Any]:
    """`score` of one fold's predictions (`res` = verdicts or (verdicts, bit_exact))."""
    pred, exact = res if isinstance(res, tuple) else (res, None)
    rep = score(pred, te, k, need)
    rep["fold"] = " / ".join(fold.names)
    rep["benign_families"] = list(fold.benign_families)
    if exact is not None:
        rep["bit_exact"] = bool(exact)
    return rep


Fit = Callable[[PacketSet, str, bool], Callable[[PacketSet], Any]]


def select(
    tr: PacketSet,
    fit: Fit,
    candidates: Sequence[str],
    decisions: Sequence[tuple[int, int | None]],
    inner_max: int = 4,
) -> dict[str, Any]:
    """Nested validation inside one training set: choose a candidate and a decision rule.

    The inner folds are `folds(tr)` (leave-one-group-out over the *training* groups only),
    at most `inner_max` of them, evenly spaced. Each candidate is fitted on every inner
    training side (`fit(train, candidate, True)`: the inner budget) and scored on the inner
    held-out side under every decision rule (k, need). The choice maximizes the mean inner
    covert recall minus the mean inner benign FPR; equal scores (the flow figures saturate
    easily on few inner flows) are broken by the mean inner vote margin (`vote_margin`:
    covert minus benign share of flagged voting packets), then by the earlier candidate
    and rule. The quorum stays the rule's (`need`; None: 3/4 of k). `choose_need`'s
    quorum from the same inner predictions (the centre of the quorums with the best inner
    score) is returned apart as `nested_quorum`, an ablation: it was tried as the choice
    and lost recall (docs/innet.md). The outer held-out connections are never seen here.
    """
    inner = folds(tr)
    if len(inner) > inner_max:
        inner = [inner[round(i * (len(inner) - 1) / (inner_max - 1))] for i in range(inner_max)]
    table: list[dict[str, Any]] = []
    preds: dict[str, list[tuple[np.ndarray, PacketSet]]] = {}
    for cand in candidates:
        reps: dict[tuple[int, int | None], list[dict[str, Any]]] = {d: [] for d in decisions}
        for fold in inner:
            a, b = fold_split(tr, fold)
            te = tr.subset_flows(b)
            res = fit(tr.subset_flows(a), cand, True)(te)
            pred = res[0] if isinstance(res, tuple) else res
            preds.setdefault(cand, []).append((pred, te))
            for d in decisions:
                reps[d].append(
                    {**score(pred, te, d[0], d[1]), "margin": vote_margin(pred, te, d[0])}
                )
        for d in decisions:
            m = mean_of(reps[d])
            rec, fpr = m["covert_recall"], m["benign_false_positive_rate"]
            table.append({
                "candidate": cand, "k": d[0], "need": d[1],
                "inner_recall": rec, "inner_fpr": fpr,
                "score": (rec if rec is not None else 0.0) - (fpr if fpr is not None else 0.0),
                "margin": float(np.mean([r["margin"] for r in reps[d]])),
            })  # fmt: skip
    # max keeps the first of equal (score, margin)
    best = max(table, key=lambda r: (r["score"], r["margin"]))
    alt, quorum = choose_need(preds.get(best["candidate"], []), best["k"])
    return {"candidate": best["candidate"], "k": best["k"], "need": best["need"],
            "nested_quorum": alt, "inner_folds": len(inner), "table": table,
            "quorum_table": quorum}  # fmt: skip


def choose_need(
    inner: Sequence[tuple[np.ndarray, PacketSet]], k: int
) -> tuple[int | None, list[dict[str, Any]] | None]:
    """The quorum for a decision after k voting packets, from inner-fold predictions only.

    Every majority quorum need = k // 2 + 1 .. k is scored on the inner held-out sides
    (mean inner covert recall minus mean inner benign FPR). The quorums with the best score
    form the interval between the most covert votes an inner benign flow got and the fewest
    an inner covert flow got; the choice is its centre (the lower of two middle values):
    the threshold farthest from both classes' inner flows, as a max-margin classifier
    places its boundary, instead of a fixed 3/4. A quorum below a majority is never chosen
    (it would flag flows whose voting packets are mostly benign). Returns (None, None)
    when there are no inner predictions (the caller keeps 3/4).
    """
    if not inner:
        return None, None
    rows = []
    for need in range(k // 2 + 1, k + 1):
        m = mean_of([score(pred, te, k, need) for pred, te in inner])
        rec, fpr = m["covert_recall"], m["benign_false_positive_rate"]
        sc = (rec if rec is not None else 0.0) - (fpr if fpr is not None else 0.0)
        rows.append({"need": need, "inner_recall": rec, "inner_fpr": fpr, "score": sc})
    top = max(r["score"] for r in rows)
    best = [r["need"] for r in rows if r["score"] >= top - 1e-12]
    return int(best[(len(best) - 1) // 2]), rows


def vote_margin(pred: np.ndarray, te: PacketSet, k: int) -> float:
    """Share of flagged voting packets (the first WARMUP + k of each flow instance) on
    covert sender flows minus that on benign flows: how far from the decision threshold a
    model's flow verdicts are, in [-1, 1] (0 when a class is absent)."""
    if te.inst is None:
        return 0.0
    vote = (te.inst >= 0) & (instance_rank(te.inst) <= k + WARMUP)
    cov, ben = vote & (te.y == 1), vote & (te.y == 0)
    if not cov.any() or not ben.any():
        return 0.0
    return float(pred[cov].mean() - pred[ben].mean())


def run_nested(
    ps: PacketSet,
    fit: Fit,
    candidates: Sequence[str],
    decisions: Sequence[tuple[int, int | None]],
    inner_max: int = 4,
    only: list[int] | None = None,
) -> dict[str, Any]:
    """`run` with the candidate and the decision rule chosen per fold by `select` on that
    fold's training groups; the chosen model is then fitted on the whole training side
    (`fit(train, candidate, False)`) and scored once on the held-out side. Each fold report
    also holds the same model's figures under `select`'s `nested_quorum` (the ablation
    `nested_quorum`; their mean: `mean_nested_quorum`)."""
    per: list[dict[str, Any]] = []
    for i, fold in enumerate(folds(ps)):
        if only is not None and i not in only:
            continue
        tr_ids, te_ids = fold_split(ps, fold)
        tr, te = ps.subset_flows(tr_ids), ps.subset_flows(te_ids)
        sel = select(tr, fit, candidates, decisions, inner_max)
        res = fit(tr, sel["candidate"], False)(te)
        rep = _fold_report(res, te, fold, sel["k"], sel["need"])
        rep["selected"] = sel
        rep["need"] = sel["need"] if sel["need"] is not None else default_need(sel["k"])
        # the same model's figures under the quorum choose_need picks (an ablation)
        alt = _fold_report(res, te, fold, sel["k"], sel["nested_quorum"])
        rep["nested_quorum"] = {
            "need": alt_need if (alt_need := sel["nested_quorum"]) is not None else rep["need"],
            **{key: alt[key] for key in _ALT_KEYS},
        }
        per.append(rep)
    alt_mean = mean_of([r["nested_quorum"] for r in per])
    return {"folds": per, "mean": mean_of(per), "mean_nested_quorum": alt_mean, "nested": True}


_ALT_KEYS = (
    "covert_recall", "benign_false_positive_rate", "flow_accuracy", "packet_accuracy",
    "return_flagged_rate", "covert_flows", "benign_flows", "return_flows", "flows",
    "missed_covert", "false_positive_files",
)  # fmt: skip


def mean_of(per: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over folds of the flow-level figures (folds without covert/benign flows skip)."""
    out: dict[str, Any] = {}
    for key, need in (
        ("covert_recall", "covert_flows"),
        ("benign_false_positive_rate", "benign_flows"),
        ("flow_accuracy", "flows"),
        ("packet_accuracy", "flows"),
        ("return_flagged_rate", "return_flows"),
    ):
        vals = [r[key] for r in per if r.get(need)]
        out[key] = float(np.mean(vals)) if vals else None
    out["min_covert_recall"] = min(
        (r["covert_recall"] for r in per if r.get("covert_flows")), default=None
    )
    out["max_benign_false_positive_rate"] = max(
        (r["benign_false_positive_rate"] for r in per if r.get("benign_flows")), default=None
    )
    if any("bit_exact" in r for r in per):
        out["bit_exact"] = all(r.get("bit_exact", False) for r in per)
    out["folds"] = len(per)
    return out
