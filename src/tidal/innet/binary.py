"""The binarized (XNOR-popcount) variant of the NetNN model.

Shape as NetNN. The first convolution stays int8 on the raw bytes (as in binarized networks
generally: the input is not binary); its output is binarized by sign (0 counts as +1), then
max-pooled (an OR on bits). conv2, fc1 and fc2 have weights in {-1, +1}; a dot product of n
{-1,+1} values is `2 * popcount(XNOR(a, w)) - n`. Hidden layers add an integer threshold per
neuron before the sign (what batch norm folds into); fc1 also adds the integer inter-arrival-time
table. fc2 yields integer logits.

Contract: `BinRef.forward` (numpy, packed bits, XNOR + popcount) equals the float64 forward pass
of `BinNetNN` exactly, because every value is a small integer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tidal.innet.qmodel import IN_EXP, _b, fq_int, fq_weight, weight_exponent

_POP = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor, clip: float) -> torch.Tensor:
        ctx.save_for_backward(x)  # type: ignore[attr-defined]
        ctx.clip = clip  # type: ignore[attr-defined]
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx: object, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return g * (x.abs() <= ctx.clip).to(g.dtype), None  # type: ignore[attr-defined]


def sign(x: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    out: torch.Tensor = _SignSTE.apply(x, clip)
    return out


def _round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.floor(x + 0.5) - x).detach()


class BinNetNN(nn.Module):
    """Binarized NetNN (see module docstring)."""

    def __init__(self, c1: int = 8, c2: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.c1, self.c2, self.hidden = c1, c2, hidden
        self.conv1 = nn.Conv1d(1, c1, 5)
        self.w2 = nn.Parameter(torch.randn(c2, c1, 5) * 0.1)
        self.t2 = nn.Parameter(torch.zeros(c2))
        self.w3 = nn.Parameter(torch.randn(hidden, c2 * 14) * 0.1)
        self.t3 = nn.Parameter(torch.zeros(hidden))
        self.iat = nn.Embedding(256, hidden)
        nn.init.normal_(self.iat.weight, std=2.0)
        self.w4 = nn.Parameter(torch.randn(2, hidden) * 0.1)
        self.b4 = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor, iat: torch.Tensor) -> torch.Tensor:
        dt = self.w3.dtype
        e1 = weight_exponent(self.conv1.weight, -IN_EXP)
        x0 = (x.to(dt) / 2.0**IN_EXP).unsqueeze(1)
        h1 = nn.functional.conv1d(
            x0, fq_weight(self.conv1.weight, e1), fq_int(_b(self.conv1.bias), IN_EXP + e1, 32)
        )
        a1 = nn.functional.max_pool1d(sign(h1, 0.5), 2)
        h2 = nn.functional.conv1d(a1, sign(self.w2), stride=2) + _round(self.t2)[None, :, None]
        a2 = sign(h2, 3.0 * self.c1**0.5).reshape(x.shape[0], -1)
        h3 = a2 @ sign(self.w3).T + _round(self.t3) + _round(self.iat.weight)[iat]
        a3 = sign(h3, 3.0 * (self.c2 * 14) ** 0.5)
        return a3 @ sign(self.w4).T + _round(self.b4)

    def to_ref(self) -> BinRef:
        e1 = weight_exponent(self.conv1.weight, -IN_EXP)

        def q(t: torch.Tensor, e: int, lim: int) -> np.ndarray:
            v = torch.floor(t.detach().double() * 2.0**e + 0.5).clamp(-lim, lim - 1)
            return v.numpy().astype(np.int64)

        def bits(t: torch.Tensor) -> np.ndarray:
            return (t.detach() >= 0).numpy()

        return BinRef(
            w1=q(self.conv1.weight, e1, 128)[:, 0, :],
            b1=q(_b(self.conv1.bias), IN_EXP + e1, 2**31),
            w2=bits(self.w2),
            t2=q(self.t2, 0, 2**31),
            w3=bits(self.w3),
            t3=q(self.t3, 0, 2**31),
            e3=q(self.iat.weight, 0, 2**31),
            w4=bits(self.w4),
            b4=q(self.b4, 0, 2**31),
        )


def xnor_dot(a_bits: np.ndarray, w_bits: np.ndarray) -> np.ndarray:
    """{-1,+1} dot products from bits: a (N, n) bool, w (M, n) bool -> (N, M) int64.

    Packs both into bytes, XNORs them and popcounts (padding bits masked off).
    """
    n = a_bits.shape[1]
    pa, pw = np.packbits(a_bits, axis=1), np.packbits(w_bits, axis=1)
    mask = np.packbits(np.ones(n, dtype=bool))
    x = ~(pa[:, None, :] ^ pw[None, :, :]) & mask[None, None, :]
    pop = _POP[x].sum(axis=2)
    return 2 * pop - n


@dataclass
class BinRef:
    """Integer / bit reference of `BinNetNN`."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray  # (C2, C1, 5) bool (True = +1)
    t2: np.ndarray
    w3: np.ndarray  # (H, C2*14) bool
    t3: np.ndarray
    e3: np.ndarray  # (256, H)
    w4: np.ndarray  # (2, H) bool
    b4: np.ndarray

    def forward(self, x: np.ndarray, iat: np.ndarray) -> np.ndarray:
        from tidal.innet.intref import conv1d_int

        n = x.shape[0]
        h1 = conv1d_int(x.astype(np.int64)[:, None, :], self.w1[:, None, :], self.b1, 1)
        b1 = h1 >= 0
        a1 = b1[:, :, 0::2] | b1[:, :, 1::2]  # max-pool on {-1,+1} is OR on bits
        c2, c1, k = self.w2.shape
        lout = (a1.shape[2] - k) // 2 + 1
        idx = np.arange(lout)[:, None] * 2 + np.arange(k)[None, :]
        patches = a1[:, :, idx].transpose(0, 2, 1, 3).reshape(n * lout, c1 * k)
        h2 = xnor_dot(patches, self.w2.reshape(c2, c1 * k)).reshape(n, lout, c2)
        a2 = (h2.transpose(0, 2, 1) + self.t2[None, :, None] >= 0).reshape(n, -1)
        h3 = xnor_dot(a2, self.w3) + self.t3[None, :] + self.e3[iat.astype(np.int64)]
        return xnor_dot(h3 >= 0, self.w4) + self.b4[None, :]

    def predict(self, x: np.ndarray, iat: np.ndarray, batch: int = 4096) -> np.ndarray:
        out = []
        for i in range(0, len(x), batch):
            lg = self.forward(x[i : i + batch], iat[i : i + batch])
            out.append((lg[:, 1] > lg[:, 0]).astype(np.int64))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
