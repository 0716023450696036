"""Bounded training of the QAT model (and its ablations) on the training split.

Contract: `train_model(ps, cfg)` trains on the given packet set only (callers pass the train
split), at most `cfg.epochs` epochs and `cfg.max_seconds` of work, single-threaded, seeded.
Each flow contributes at most `cfg.cap_per_flow` packets (a deterministic sample) so the few
very long covert flows do not drown the many short benign ones; the loss is class-balanced.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn

from tidal.core.clock import Clock, MonotonicClock
from tidal.innet.dataset import PacketSet
from tidal.innet.qmodel import NetNN

Features = Literal["both", "bytes", "timing"]


class TrainConfig(BaseModel):
    """Training hyperparameters (validated)."""

    epochs: int = Field(default=8, ge=1, le=200, description="passes over the capped training set")
    max_seconds: float = Field(
        default=240.0, gt=0, description="stop after this much training time"
    )
    batch: int = Field(default=256, ge=8, le=65536, description="minibatch size")
    lr: float = Field(default=3e-3, gt=0, le=1.0, description="Adam learning rate")
    cap_per_flow: int = Field(default=1500, ge=1, description="packets sampled per flow at most")
    seed: int = Field(default=0, description="torch and numpy seed")
    features: Features = Field("both", description="ablation: bytes, timing or both")
    masked: bool = Field(default=True, description="train on masked bytes (the default)")
    c1: int = Field(default=4, ge=1, le=64)
    c2: int = Field(default=8, ge=1, le=64)
    hidden: int = Field(default=16, ge=2, le=256)


def capped_indices(flow: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices with at most `cap` rows per flow (uniform sample within larger flows)."""
    out = []
    for f in np.unique(flow):
        rows = np.flatnonzero(flow == f)
        if rows.size > cap:
            rows = np.sort(rng.choice(rows, size=cap, replace=False))
        out.append(rows)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def train_model(
    ps: PacketSet, cfg: TrainConfig, clock: Clock | None = None, model: nn.Module | None = None
) -> Any:
    """Train a NetNN (or the given model, e.g. the binarized one) on `ps`; eval mode."""
    clock = clock or MonotonicClock()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(cfg.seed)
    rows = capped_indices(ps.flow, cfg.cap_per_flow, rng)
    xs = (ps.x if cfg.masked else ps.x_raw)[rows].astype(np.float32)
    x = torch.from_numpy(xs)
    iat = torch.from_numpy(ps.iat[rows].astype(np.int64))
    y = torch.from_numpy(ps.y[rows])
    counts = np.bincount(ps.y[rows], minlength=2).astype(np.float64)
    weight = torch.tensor(counts.sum() / (2.0 * np.maximum(counts, 1.0)), dtype=torch.float32)
    model = model or NetNN(
        cfg.c1,
        cfg.c2,
        cfg.hidden,
        use_bytes=cfg.features != "timing",
        use_timing=cfg.features != "bytes",
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    start = clock.now()
    n = len(rows)
    for _epoch in range(cfg.epochs):
        model.train()
        perm = torch.from_numpy(rng.permutation(n))
        for i in range(0, n, cfg.batch):
            idx = perm[i : i + cfg.batch]
            opt.zero_grad()
            loss = loss_fn(model(x[idx], iat[idx]), y[idx])
            loss.backward()
            opt.step()
            if clock.now() - start > cfg.max_seconds:
                break
        sched.step()
        if clock.now() - start > cfg.max_seconds:
            break
    return model.eval()
