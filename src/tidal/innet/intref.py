"""The integer reference of the quantized NetNN model, in numpy (int64 arithmetic throughout).

Contract: `IntNet.forward(x, iat)` takes bytes (N, 68) in 0..255 and quantized inter-arrival
times (N,) in 0..255 and returns the integer logits (N, 2); `predict` gives 1 (covert) iff
logit[1] > logit[0]. It reproduces `qmodel.NetNN` bit for bit (see the scale contract there).
Requantization: `requant(acc, s) = clip(floor((acc + 2^(s-1)) / 2^s), 0, 127)` (s >= 0).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from tidal.core.errors import TidalError

ACT_MAX = 127


def requant(acc: np.ndarray, shift: int) -> np.ndarray:
    """Round-half-up arithmetic shift, clamped to 0..127 (ReLU included)."""
    if shift > 0:
        acc = (acc + (1 << (shift - 1))) >> shift
    return np.clip(acc, 0, ACT_MAX)


def conv1d_int(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """x (N, Cin, L), w (Cout, Cin, K), b (Cout,) -> (N, Cout, Lout) in int64."""
    n, cin, length = x.shape
    cout, _, k = w.shape
    lout = (length - k) // stride + 1
    idx = np.arange(lout)[:, None] * stride + np.arange(k)[None, :]  # (Lout, K)
    patches = x[:, :, idx]  # (N, Cin, Lout, K)
    return np.einsum("nclk,ock->nol", patches, w, dtype=np.int64) + b[None, :, None]


def side2d(iat: np.ndarray, n: int) -> np.ndarray:
    """Side features as (N, n) int64; a 1-D array is the inter-arrival time alone."""
    a = np.asarray(iat).astype(np.int64)
    if a.ndim == 1:
        a = a[:, None]
    if a.shape[1] < n:
        a = np.pad(a, ((0, 0), (0, n - a.shape[1])))
    return a[:, :n]


@dataclass
class IntNet:
    """Integer weights, biases, shifts and the inter-arrival-time table of the model."""

    w1: np.ndarray  # (C1, 5) int8 values
    b1: np.ndarray  # (C1,)
    s1: int
    w2: np.ndarray  # (C2, C1, 5)
    b2: np.ndarray  # (C2,)
    s2: int
    w3: np.ndarray  # (H, C2*14)
    b3: np.ndarray  # (H,)
    t3: np.ndarray  # (F, 256, H) side-feature tables ((256, H): the IAT alone), layer-3 scale
    s3: int
    w4: np.ndarray  # (2, H)
    b4: np.ndarray  # (2,)
    use_bytes: bool = True

    def layer1(self, x: np.ndarray) -> np.ndarray:
        """Conv1 + requant + max-pool: (N, 68) -> (N, C1, 32)."""
        acc = conv1d_int(x.astype(np.int64)[:, None, :], self.w1[:, None, :], self.b1, 1)
        a = requant(acc, self.s1)
        return np.maximum(a[:, :, 0::2], a[:, :, 1::2])

    def layer2(self, a1: np.ndarray) -> np.ndarray:
        """Conv2 + requant, flattened channel-major: (N, C1, 32) -> (N, C2*14)."""
        a = requant(conv1d_int(a1, self.w2, self.b2, 2), self.s2)
        return a.reshape(a.shape[0], -1)

    @property
    def tables(self) -> np.ndarray:
        """The side-feature tables as (F, 256, H)."""
        return self.t3 if self.t3.ndim == 3 else self.t3[None]

    def layer3_acc(self, a2: np.ndarray, iat: np.ndarray) -> np.ndarray:
        t = self.tables
        side = side2d(iat, t.shape[0])
        acc = a2 @ self.w3.T + self.b3[None, :]
        for f in range(t.shape[0]):
            acc = acc + t[f][side[:, f]]
        return acc

    def forward(self, x: np.ndarray, iat: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        if self.use_bytes:
            a2 = self.layer2(self.layer1(x))
        else:
            a2 = np.zeros((n, self.w3.shape[1]), dtype=np.int64)
        a3 = requant(self.layer3_acc(a2, iat), self.s3)
        return a3 @ self.w4.T + self.b4[None, :]

    def predict(self, x: np.ndarray, iat: np.ndarray, batch: int = 16384) -> np.ndarray:
        out = [
            (lg[:, 1] > lg[:, 0]).astype(np.int64)
            for i in range(0, len(x), batch)
            for lg in [self.forward(x[i : i + batch], iat[i : i + batch])]
        ]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def save(self, path: Path, **meta: object) -> None:
        arrays = {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}
        meta_arr = {f"meta_{k}": np.asarray(v) for k, v in meta.items()}
        np.savez_compressed(path, **{**arrays, **meta_arr})  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> IntNet:
        try:
            z = np.load(path)
        except (OSError, ValueError) as e:
            raise TidalError(f"cannot load integer model {str(path)!r}: {e}") from e
        kw: dict[str, object] = {}
        for f in fields(cls):
            v = z[f.name]
            kw[f.name] = (
                int(v)
                if f.name.startswith("s")
                else (bool(v) if f.name == "use_bytes" else v.astype(np.int64))
            )
        return cls(**kw)  # type: ignore[arg-type]
