"""Calls a served model over the Open Inference Protocol v2 (KServe / Triton / Tidal).

Each batch becomes one request ``POST {url}/v2/models/{model}/infer`` with a FP32 tensor
``[N, 64]`` of features derived from the transaction (amount, hour, card and merchant
hashed into 64 slots); the argmax of the model's first output goes into `flag`.
Environment: ``TIDAL_CEP_OIP_URL`` (default http://127.0.0.1:8000),
``TIDAL_CEP_OIP_MODEL`` (default digits-mlp), ``TIDAL_CEP_OIP_TIMEOUT_S`` (default 10),
``TIDAL_CEP_OIP_INPUT`` (default: the first input named in the model's metadata).
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import numpy as np

from tidal.cep.codec import Batch
from tidal.cep.sdk.python import Operator


def features(card: np.ndarray, amount: np.ndarray, ts: np.ndarray, merchant: np.ndarray) -> Any:
    """An [N, 64] float32 matrix in [0, 16] (the digits model's input range)."""
    n = len(card)
    x = np.zeros((n, 64), dtype=np.float32)
    x[np.arange(n), card % 64] += 8.0
    x[np.arange(n), (merchant * 7) % 64] += 4.0
    x[:, 0] = np.minimum(np.log1p(amount) * 2.0, 16.0)
    x[:, 1] = (ts % 86400.0) / 5400.0
    return x


class OipModel(Operator):
    required = ("card", "amount", "ts")

    def __init__(self) -> None:
        super().__init__()
        base = os.environ.get("TIDAL_CEP_OIP_URL", "http://127.0.0.1:8000").rstrip("/")
        self.model = os.environ.get("TIDAL_CEP_OIP_MODEL", "digits-mlp")
        self.url = f"{base}/v2/models/{self.model}/infer"
        # verify= only for https: for plain http no TLS is used, and loading the CA bundle
        # would read a file a sandboxed operator may not be allowed to read.
        self.http = httpx.Client(
            timeout=float(os.environ.get("TIDAL_CEP_OIP_TIMEOUT_S", "10")),
            verify=base.startswith("https://"),
        )
        self.input_name = os.environ.get("TIDAL_CEP_OIP_INPUT") or self._input_name(base)

    def _input_name(self, base: str) -> str:
        """The model's first input name from its OIP metadata (``input-0`` if unknown)."""
        try:
            r = self.http.get(f"{base}/v2/models/{self.model}")
            if r.status_code == 200:
                return str(r.json()["inputs"][0]["name"])
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            pass
        return "input-0"

    def infer(self, x: np.ndarray) -> np.ndarray:
        body = {
            "inputs": [
                {
                    "name": self.input_name,
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ]
        }
        r = self.http.post(self.url, json=body)
        r.raise_for_status()
        out = r.json()["outputs"][0]
        y = np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])
        return y.argmax(axis=1) if y.ndim == 2 else y.astype(np.int64)

    def process(self, batch: Batch) -> Batch:
        if len(batch) == 0:
            return batch
        if isinstance(batch, np.ndarray):
            x = features(batch["card"], batch["amount"], batch["ts"], batch["merchant"])
            out = batch.copy()
            out["flag"] = self.infer(x)
            return out
        card = np.array([int(e["card"]) for e in batch])
        amount = np.array([float(e["amount"]) for e in batch])
        ts = np.array([float(e["ts"]) for e in batch])
        merch = np.array([int(e.get("merchant", 0)) for e in batch])
        cls = self.infer(features(card, amount, ts, merch))
        return [{**e, "flag": int(c)} for e, c in zip(batch, cls, strict=True)]


OPERATOR = OipModel
