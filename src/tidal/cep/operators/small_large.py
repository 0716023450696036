"""Stateful per-card pattern: a small purchase (< 5) then a large one (> 500) within 10 min.

Keyed state: the time of each card's last small purchase (`DenseKeyedState`, vectorized).
Outputs only the large transactions that complete the pattern, with flag = 2; with
``TIDAL_CEP_EMIT=all`` it outputs every event (flag 2 on a match, else 0), so a host can
count lost and duplicated events (the Flink benchmark does).
"""

from __future__ import annotations

import os

import numpy as np

from tidal.cep.codec import Batch
from tidal.cep.sdk.python import DenseKeyedState, Operator

SMALL, LARGE, WINDOW_S = 5.0, 500.0, 600.0


class SmallLarge(Operator):
    required = ("card", "amount", "ts")

    def __init__(self) -> None:
        super().__init__()
        self.emit_all = os.environ.get("TIDAL_CEP_EMIT") == "all"
        self.keyed = DenseKeyedState(1024, {"last_small": "f8"}, fill={"last_small": -np.inf})

    def process(self, batch: Batch) -> Batch:
        arr = batch if isinstance(batch, np.ndarray) else _to_array(batch)
        if len(arr) == 0:
            return arr if isinstance(batch, np.ndarray) else []
        card = arr["card"]
        self.keyed.ensure(int(card.max()))
        last = self.keyed.cols["last_small"]
        order = np.argsort(card, kind="stable")
        c, ts, amt = card[order], arr["ts"][order], arr["amount"][order]
        small = amt < SMALL
        idx = np.where(small, np.arange(len(c)), -1)
        prev = np.maximum.accumulate(idx)
        same = (prev >= 0) & (c[np.maximum(prev, 0)] == c)
        prev_ts = np.where(same, ts[np.maximum(prev, 0)], last[c])
        hit = (amt > LARGE) & (ts - prev_ts <= WINDOW_S)
        np.maximum.at(last, c[small], ts[small])
        if self.emit_all:
            out = arr.copy()
            out["flag"] = 0
            out["flag"][order[hit]] = 2
        else:
            sel = np.sort(order[hit])
            out = arr[sel].copy()
            out["flag"] = 2
        if isinstance(batch, np.ndarray):
            return out
        names = out.dtype.names or ()
        return [dict(zip(names, r.tolist(), strict=True)) for r in out]

    def snapshot(self) -> bytes:
        return self.keyed.snapshot()

    def restore(self, data: bytes) -> None:
        if data:
            self.keyed.restore(data)


def _to_array(events: list[dict]) -> np.ndarray:
    from tidal.cep.codec import TXN_DTYPE

    arr = np.zeros(len(events), dtype=TXN_DTYPE)
    for i, e in enumerate(events):
        arr[i] = (e.get("seq", 0), e["card"], e["ts"], e["amount"], e.get("merchant", 0), 0)
    return arr


OPERATOR = SmallLarge
