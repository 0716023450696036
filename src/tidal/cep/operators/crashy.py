"""A faulty forward operator for fault tests: the process dies on a poison event.

An event whose amount equals `TIDAL_CEP_POISON` (default -1) kills the process with exit
code 3 (as a segfault or an uncaught error would); every other event is forwarded.
"""

from __future__ import annotations

import os

import numpy as np

from tidal.cep.codec import Batch
from tidal.cep.sdk.python import Operator

POISON = float(os.environ.get("TIDAL_CEP_POISON", "-1"))


class Crashy(Operator):
    def process(self, batch: Batch) -> Batch:
        if isinstance(batch, np.ndarray):
            if np.any(batch["amount"] == POISON):
                os._exit(3)
            return batch
        if any(float(e.get("amount", 0)) == POISON for e in batch):
            os._exit(3)
        return batch


OPERATOR = Crashy
