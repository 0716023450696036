"""Stateful per-card counter: each event goes out with flag = its card's running count.

Used to check hot updates: with state carried, every card's flags read 1, 2, 3, ... with no
gap (nothing lost), no repeat (nothing duplicated) and in order (per-key order kept).
`TIDAL_CEP_STATE_CARDS` pre-sizes the state (8 bytes per card: 131072 cards = 1 MB).
With ``TIDAL_CEP_STAMP=version`` every output carries the operator's version
(``TIDAL_CEP_VERSION``) in `merchant`, so a host can tell versions apart in the result stream.
"""

from __future__ import annotations

import os

import numpy as np

from tidal.cep.codec import Batch
from tidal.cep.sdk.python import DenseKeyedState, Operator


class CardCount(Operator):
    required = ("card",)

    def __init__(self) -> None:
        super().__init__()
        cards = int(os.environ.get("TIDAL_CEP_STATE_CARDS", "1024"))
        self.keyed = DenseKeyedState(cards, {"count": "i8"})
        stamp = os.environ.get("TIDAL_CEP_STAMP") == "version"
        self.stamp = int(os.environ.get("TIDAL_CEP_VERSION", "0")) if stamp else None

    def process(self, batch: Batch) -> Batch:
        if isinstance(batch, np.ndarray):
            return self._vector(batch)
        out = []
        for ev in batch:
            c = int(ev["card"])
            self.keyed.ensure(c)
            self.keyed.cols["count"][c] += 1
            out.append({**ev, "flag": int(self.keyed.cols["count"][c])})
            if self.stamp is not None:
                out[-1]["merchant"] = self.stamp
        return out

    def _vector(self, arr: np.ndarray) -> np.ndarray:
        if len(arr) == 0:
            return arr
        card = arr["card"]
        self.keyed.ensure(int(card.max()))
        cnt = self.keyed.cols["count"]
        order = np.argsort(card, kind="stable")
        c = card[order]
        starts = np.r_[0, np.flatnonzero(c[1:] != c[:-1]) + 1]
        rank = np.arange(len(c)) - np.repeat(starts, np.diff(np.r_[starts, len(c)]))
        out = arr.copy()
        out["flag"][order] = cnt[c] + rank + 1
        np.add.at(cnt, card, 1)
        if self.stamp is not None:
            out["merchant"] = self.stamp
        return out

    def snapshot(self) -> bytes:
        return self.keyed.snapshot()

    def restore(self, data: bytes) -> None:
        if data:
            self.keyed.restore(data)


OPERATOR = CardCount
