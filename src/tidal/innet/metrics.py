"""Per-packet and per-flow detection metrics.

Contract: a flow's verdict is the majority of the per-packet verdicts over its first
`first_n` packets (all packets when None); a tie is benign. Flow-level figures (accuracy,
covert recall, benign false-positive rate, F1 of the covert class) count each flow once.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def flow_verdicts(
    pred: np.ndarray, flow: np.ndarray, n_flows: int, first_n: int | None = None
) -> np.ndarray:
    """(n_flows,) majority verdict of each flow over its first `first_n` packets."""
    if first_n is not None:
        order = np.argsort(flow, kind="stable")
        f_sorted = flow[order]
        starts = np.searchsorted(f_sorted, np.arange(n_flows))
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order)) - starts[f_sorted]
        keep = rank < first_n
        pred, flow = pred[keep], flow[keep]
    votes = np.bincount(flow, weights=pred, minlength=n_flows)
    count = np.bincount(flow, minlength=n_flows)
    return (2 * votes > count).astype(np.int64)


def report(
    pred: np.ndarray,
    y: np.ndarray,
    flow: np.ndarray,
    flow_labels: np.ndarray,
    first_n: int | None = None,
) -> dict[str, float | int]:
    """Packet accuracy plus flow accuracy, covert recall, benign FPR and F1 (flow level)."""
    n_flows = len(flow_labels)
    fv = flow_verdicts(pred, flow, n_flows, first_n)
    tp = int(((fv == 1) & (flow_labels == 1)).sum())
    fp = int(((fv == 1) & (flow_labels == 0)).sum())
    fn = int(((fv == 0) & (flow_labels == 1)).sum())
    pos = int((flow_labels == 1).sum())
    neg = n_flows - pos
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / pos if pos else 0.0
    return {
        "packet_accuracy": float((pred == y).mean()) if len(y) else 0.0,
        "flow_accuracy": float((fv == flow_labels).mean()) if n_flows else 0.0,
        "covert_recall": rec,
        "benign_false_positive_rate": fp / neg if neg else 0.0,
        "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
        "flows": n_flows,
        "packets": int(len(y)),
        "false_negative_flows": fn,
        "false_positive_flows": fp,
    }


def flow_report(pred: np.ndarray, ps: Any, k: int, need: int | None = None) -> dict[str, Any]:
    """Per-flow figures from the switch's decision after k packets (flowstate), per direction.

    Covert recall counts covert sender flows; the benign FPR counts benign flows; the covert
    connections' return directions (pure ACKs) are reported apart (`return_flagged_rate`),
    never as covert or benign. Packet accuracy is over covert-sender and benign packets.
    """
    from tidal.innet.flowstate import flow_decisions  # innet-internal; avoids an import cycle

    fl = ps.flow_labels
    verdict, taken = flow_decisions(pred, ps.inst, ps.flow, len(ps.flows), k, need)
    cov, ben, ret = fl == 1, fl == 0, fl == -1
    lab = ps.y >= 0
    tp = int((verdict[cov] == 1).sum())
    fp = int((verdict[ben] == 1).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / int(cov.sum()) if cov.any() else 0.0
    scored = cov | ben
    out: dict[str, Any] = {
        "covert_recall": rec,
        "benign_false_positive_rate": fp / int(ben.sum()) if ben.any() else 0.0,
        "flow_accuracy": float((verdict[scored] == fl[scored]).mean()) if scored.any() else 0.0,
        "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
        "packet_accuracy": float((pred[lab] == ps.y[lab]).mean()) if lab.any() else 0.0,
        "benign_packet_accuracy": float((pred[ps.y == 0] == 0).mean()) if ben.any() else 0.0,
        "covert_flows": int(cov.sum()),
        "benign_flows": int(ben.sum()),
        "return_flows": int(ret.sum()),
        "return_flagged_rate": float(verdict[ret].mean()) if ret.any() else 0.0,
        "flows": int(scored.sum()),
        "packets": int(len(pred)),
        "mean_packets_to_decision": float(taken[scored].mean()) if scored.any() else 0.0,
        "missed_covert": sorted(
            {_short(ps.flows[i].file) for i in np.flatnonzero(cov & (verdict == 0))}
        ),
        "false_positive_files": sorted(
            {_short(ps.flows[i].file) for i in np.flatnonzero(ben & (verdict == 1))}
        ),
    }
    # per direction: the initiator (first packet seen of the connection) and the responder
    out["per_direction"] = _per_direction(verdict, ps, fl)
    return out


def _short(file: str) -> str:
    return file.rsplit("/", 1)[-1]


def _per_direction(verdict: np.ndarray, ps: Any, fl: np.ndarray) -> dict[str, Any]:
    first_of_conn: dict[str, int] = {}
    order = np.unique(ps.flow, return_index=True)
    for fid in order[0][np.argsort(order[1])]:
        first_of_conn.setdefault(ps.flows[fid].connection, int(fid))
    out: dict[str, Any] = {}
    for label, lname in ((1, "covert_sender"), (0, "benign"), (-1, "covert_return")):
        for role in ("initiator", "responder"):
            ids = [
                i
                for i, f in enumerate(ps.flows)
                if fl[i] == label
                and (first_of_conn.get(f.connection) == i) == (role == "initiator")
            ]
            if ids:
                out[f"{lname}/{role}"] = {
                    "flows": len(ids),
                    "flagged": int(verdict[ids].sum()),
                    "flagged_rate": float(verdict[ids].mean()),
                }
    return out
