"""The `noop` variant: identity on a float32 (64,) input, for data-plane overhead benchmarks."""

from __future__ import annotations

import torch
from torch import nn


class Noop(nn.Module):
    """Returns its input unchanged (exported as a single ONNX node)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


def build_noop() -> nn.Module:
    return Noop().eval()
