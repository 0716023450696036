"""Fraud flag: flag = 1 on transactions over 1000 or on cards from a block list (stateless)."""

from __future__ import annotations

import numpy as np

from tidal.cep.codec import Batch
from tidal.cep.sdk.python import Operator

LIMIT = 1000.0
BLOCKED = 7  # cards whose id is divisible by 997 are blocked (a stand-in list)


def flag_of(card: int, amount: float) -> int:
    return int(amount > LIMIT or card % 997 == BLOCKED)


class FraudFlag(Operator):
    required = ("card", "amount")

    def process(self, batch: Batch) -> Batch:
        if isinstance(batch, np.ndarray):
            out = batch.copy()
            out["flag"] = (out["amount"] > LIMIT) | (out["card"] % 997 == BLOCKED)
            return out
        res = []
        for ev in batch:
            e = dict(ev)
            e["flag"] = flag_of(int(ev["card"]), float(ev["amount"]))
            res.append(e)
        return res


OPERATOR = FraudFlag
