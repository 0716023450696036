"""The NetNN-shaped network in torch with quantization-aware training (int8, power-of-two scales).

Shape: bytes (1 x 68) -> Conv1D(k=5) -> ReLU -> MaxPool(2) -> Conv1D(k=5, stride 2) -> ReLU
-> Dense(+ one lookup table per side feature) -> ReLU -> Dense(2). The side features are the
per-flow values the entry switch keeps (flowstate.py): inter-arrival time, the previous one,
and the payload-length change; `side` selects which of them the model uses.

Quantization contract (what makes the integer reference bit-exact):
- input bytes are integers 0..255 at scale 2^-8; activations are integers 0..127 at scale 2^-4;
- each layer's weights are int8 (-127..127) at scale 2^-e, with e a per-layer integer chosen
  from the largest weight (`weight_exponent`); biases are int32 at the accumulator scale;
- each side feature (0..255) enters the first dense layer through a lookup table of int16
  values at that layer's accumulator scale (how a switch does it: a table keyed on it);
- requantization is `floor(acc * 2^-shift + 1/2)` clamped to 0..127 (ReLU included).
All scales are powers of two, so the fake-quantized float64 forward pass computes exactly the
integers times their scales; `IntNet` (intref.py) computes the integers themselves.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from tidal.innet.flowstate import N_SIDE
from tidal.innet.intref import IntNet

IN_EXP = 8  # input scale 2^-8
ACT_EXP = 4  # activation scale 2^-4
ACT_MAX = 127
W_MAX = 127


def weight_exponent(w: torch.Tensor, min_exp: int) -> int:
    """Largest e with max|w| * 2^e <= 127 (at least `min_exp`, so the shift stays >= 0)."""
    m = float(w.detach().abs().max())
    if m == 0.0:
        return 7
    return max(min_exp, int(math.floor(math.log2(W_MAX / m))))


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return x + (q - x).detach()


def _b(t: torch.Tensor | None) -> torch.Tensor:
    assert t is not None, "layers are built with bias=True"
    return t


def fq_weight(w: torch.Tensor, e: int) -> torch.Tensor:
    s = 2.0**e
    return _ste(w, torch.clamp(torch.floor(w * s + 0.5), -W_MAX, W_MAX) / s)


def fq_int(b: torch.Tensor, e: int, bits: int) -> torch.Tensor:
    s = 2.0**e
    lim = 2 ** (bits - 1)
    return _ste(b, torch.clamp(torch.floor(b * s + 0.5), -lim, lim - 1) / s)


def _id_w(w: torch.Tensor, e: int) -> torch.Tensor:
    return w


def _id_i(b: torch.Tensor, e: int, bits: int) -> torch.Tensor:
    return b


def fq_act(x: torch.Tensor) -> torch.Tensor:
    s = 2.0**ACT_EXP
    q = torch.clamp(torch.floor(x * s + 0.5), 0, ACT_MAX) / s
    return _ste(torch.clamp(x, 0.0, ACT_MAX / s), q)


def _side2d(iat: torch.Tensor) -> torch.Tensor:
    if iat.dim() == 1:
        return torch.nn.functional.pad(iat.unsqueeze(1), (0, N_SIDE - 1))
    return iat


class NetNN(nn.Module):
    """The QAT model. `use_bytes` / `use_timing` select the ablation (both by default)."""

    def __init__(
        self,
        c1: int = 4,
        c2: int = 8,
        hidden: int = 16,
        use_bytes: bool = True,
        use_timing: bool = True,
        side: tuple[bool, ...] = (True, False, False),
    ) -> None:
        super().__init__()
        self.c1, self.c2, self.hidden = c1, c2, hidden
        self.use_bytes, self.use_timing = use_bytes, use_timing
        self.side = tuple(bool(s) and use_timing for s in side) + (False,) * (N_SIDE - len(side))

        self.quantize = True  # False: plain float (measures what quantization costs)
        self.conv1 = nn.Conv1d(1, c1, 5)
        self.conv2 = nn.Conv1d(c1, c2, 5, stride=2)
        self.n_flat = c2 * 14  # 68 -> 64 -> pool 32 -> 14
        self.fc1 = nn.Linear(self.n_flat, hidden)
        self.iat = nn.Embedding(256 * N_SIDE, hidden)
        nn.init.normal_(self.iat.weight, std=0.1)
        self.fc2 = nn.Linear(hidden, 2)

    def exponents(self) -> dict[str, int]:
        return {
            "conv1": weight_exponent(self.conv1.weight, ACT_EXP - IN_EXP),
            "conv2": weight_exponent(self.conv2.weight, 0),
            "fc1": weight_exponent(self.fc1.weight, 0),
            "fc2": weight_exponent(self.fc2.weight, 0),
        }

    def forward(self, x: torch.Tensor, iat: torch.Tensor) -> torch.Tensor:
        """x: (B, 68) bytes as float; iat: (B, N_SIDE) long side features (or (B,) = the
        inter-arrival time alone). Fake-quantized logits (plain float logits when `quantize`
        is False: the unquantized reference of the accuracy cost)."""
        side = _side2d(iat)
        e = self.exponents()
        qw, qi, qa = (fq_weight, fq_int, fq_act) if self.quantize else (_id_w, _id_i, torch.relu)
        dt = self.fc1.weight.dtype
        b = x.shape[0]
        if self.use_bytes:
            x0 = (x.to(dt) / 2.0**IN_EXP).unsqueeze(1)
            e1 = IN_EXP + e["conv1"]
            h1 = nn.functional.conv1d(
                x0, qw(self.conv1.weight, e["conv1"]), qi(_b(self.conv1.bias), e1, 32)
            )
            a1 = nn.functional.max_pool1d(qa(h1), 2)
            e2 = ACT_EXP + e["conv2"]
            h2 = nn.functional.conv1d(
                a1,
                qw(self.conv2.weight, e["conv2"]),
                qi(_b(self.conv2.bias), e2, 32),
                stride=2,
            )
            a2 = qa(h2).reshape(b, -1)
        else:
            a2 = torch.zeros(b, self.n_flat, dtype=dt)
        e3 = ACT_EXP + e["fc1"]
        h3 = nn.functional.linear(a2, qw(self.fc1.weight, e["fc1"]), qi(self.fc1.bias, e3, 32))
        if any(self.side):
            tab = qi(self.iat.weight, e3, 16).reshape(N_SIDE, 256, -1)
            for f in range(N_SIDE):
                if self.side[f]:
                    h3 = h3 + tab[f][side[:, f]]
        a3 = qa(h3)
        e4 = ACT_EXP + e["fc2"]
        return nn.functional.linear(a3, qw(self.fc2.weight, e["fc2"]), qi(self.fc2.bias, e4, 32))

    def to_int(self) -> IntNet:
        """Export the integers the fake-quantized forward pass uses."""
        e = self.exponents()

        def q(t: torch.Tensor, exp: int, lo: int, hi: int) -> np.ndarray:
            v = torch.floor(t.detach().double() * 2.0**exp + 0.5).clamp(lo, hi)
            return v.numpy().astype(np.int64)

        i32 = (-(2**31), 2**31 - 1)
        e1, e2, e3, e4 = (
            IN_EXP + e["conv1"],
            ACT_EXP + e["conv2"],
            ACT_EXP + e["fc1"],
            ACT_EXP + e["fc2"],
        )
        zero_w1 = not self.use_bytes
        return IntNet(
            w1=q(self.conv1.weight, e["conv1"], -W_MAX, W_MAX)[:, 0, :] * (0 if zero_w1 else 1),
            b1=q(_b(self.conv1.bias), e1, *i32),
            s1=e1 - ACT_EXP,
            w2=q(self.conv2.weight, e["conv2"], -W_MAX, W_MAX),
            b2=q(_b(self.conv2.bias), e2, *i32),
            s2=e2 - ACT_EXP,
            w3=q(self.fc1.weight, e["fc1"], -W_MAX, W_MAX),
            b3=q(self.fc1.bias, e3, *i32),
            t3=q(self.iat.weight, e3, -(2**15), 2**15 - 1).reshape(N_SIDE, 256, -1)
            * np.array([1 if s else 0 for s in self.side], dtype=np.int64)[:, None, None],
            s3=e3 - ACT_EXP,
            w4=q(self.fc2.weight, e["fc2"], -W_MAX, W_MAX),
            b4=q(self.fc2.bias, e4, *i32),
            use_bytes=self.use_bytes,
        )


def torch_predict(model: NetNN, x: np.ndarray, iat: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Verdicts (1 = covert) of the fake-quantized model in float64 (exact on the integers).

    A tie of the two logits is benign, as in the integer reference.
    """
    m = model.double().eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            lg = m(
                torch.from_numpy(x[i : i + batch].astype(np.float64)),
                torch.from_numpy(np.asarray(iat[i : i + batch]).astype(np.int64)),
            )
            out.append((lg[:, 1] > lg[:, 0]).numpy().astype(np.int64))
    model.float()
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
