"""Per-packet and per-flow detection metrics.

Contract: a flow's verdict is the majority of the per-packet verdicts over its first
`first_n` packets (all packets when None); a tie is benign. Flow-level figures (accuracy,
covert recall, benign false-positive rate, F1 of the covert class) count each flow once.
"""

from __future__ import annotations

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
