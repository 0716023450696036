"""Bounded training of the QAT model (and its ablations) on the training split.

Contract: `train_model(ps, cfg)` trains on the given packet set only (callers pass the train
split), at most `cfg.epochs` epochs and `cfg.max_seconds` of work, single-threaded, seeded.
Each flow contributes at most `cfg.cap_per_flow` packets (its first `FIRST_ROWS` always, the
rest a seeded sample) so the few very long covert flows do not drown the many short benign
ones; the loss is class-balanced. RETURN flows (a covert connection's pure-ACK direction) are
taught as benign: they carry no channel data, and the detector must not fire on pure ACKs.

Augmentation (`cfg.augment`, on for the committed model): every epoch re-draws each flow
instance's timing as another path and another configuration of the same channel would give
it: all gaps of an instance scaled by one factor drawn log-uniformly from
[1/`rate_spread`, `rate_spread`] (other timing parameters), plus per-gap path jitter (a
half-normal delay with a per-instance sigma up to `jitter_us`), and, with `size_shift`, every
non-empty payload of an instance lengthened by one offset drawn from 0..`size_shift` (the
channel's packet size is a tool setting; pure ACKs stay empty). The side features are then
recomputed (`flowstate.side_features`). Host fingerprints need no re-drawing here: the
channel bytes do not contain them (features.FIELD_POLICY; `perturb.py` checks it).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn

from tidal.core.clock import Clock, MonotonicClock
from tidal.innet.dataset import PacketSet
from tidal.innet.flowstate import side_features
from tidal.innet.qmodel import NetNN

Features = Literal["both", "bytes", "timing", "channel"]
FIRST_ROWS = 32
SIDE_OF: dict[str, tuple[bool, ...]] = {
    "both": (True, False, False, False, False),  # NetNN's input: bytes + the gap
    "bytes": (False, False, False, False, False),
    "timing": (True, True, False, False, True),  # gap, previous gap, their change; no bytes
    "channel": (True, True, True, True, True),  # bytes + every per-flow side feature
}


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
    features: Features = Field(
        "channel", description="bytes, timing, both (NetNN's input) or channel (the default)"
    )
    augment: bool = Field(default=True, description="re-draw timing per epoch (module doc)")
    rate_spread: float = Field(default=4.0, ge=1.0, le=64.0, description="max rate factor")
    jitter_us: float = Field(default=2000.0, ge=0.0, le=1e6, description="max jitter sigma")
    size_shift: int = Field(
        default=0, ge=0, le=9000, description="max per-instance payload-size offset (0: off)"
    )
    masked: bool = Field(default=True, description="False: train on unmasked bytes")
    legacy_mask: bool = Field(
        default=False, description="the earlier masking (features.packet_bytes), for ablations"
    )
    c1: int = Field(default=4, ge=1, le=64)
    c2: int = Field(default=8, ge=1, le=64)
    hidden: int = Field(default=16, ge=2, le=256)


def byte_view(ps: PacketSet, cfg: TrainConfig) -> np.ndarray:
    """The byte input the configuration trains (and must be evaluated) on."""
    if not cfg.masked:
        return ps.x_raw
    if cfg.legacy_mask:
        assert ps.x_legacy is not None
        return ps.x_legacy
    return ps.x


def capped_indices(flow: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices with at most `cap` rows per flow: its first FIRST_ROWS, then a sample."""
    out = []
    order = np.argsort(flow, kind="stable")
    bounds = np.searchsorted(flow[order], np.unique(flow))
    for i, start in enumerate(bounds):
        end = bounds[i + 1] if i + 1 < len(bounds) else len(order)
        rows = order[start:end]
        if rows.size > cap:
            head, rest = rows[: min(FIRST_ROWS, cap)], rows[min(FIRST_ROWS, cap) :]
            pick = rng.choice(rest, size=cap - head.size, replace=False)
            rows = np.sort(np.r_[head, pick])
        out.append(rows)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def redraw_timing(ps: PacketSet, cfg: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """Side features after re-drawing each instance's rate and path jitter (module doc)."""
    assert ps.inst is not None and ps.ts is not None and ps.paylen is not None
    inst = ps.inst
    n_inst = int(inst.max()) + 1 if len(inst) else 0
    lo, hi = -np.log(cfg.rate_spread), np.log(cfg.rate_spread)
    scale = np.exp(rng.uniform(lo, hi, n_inst))
    sigma = rng.uniform(0.0, cfg.jitter_us, n_inst)
    order = np.lexsort((np.arange(len(inst)), inst))
    ii, tt = inst[order], ps.ts[order].astype(np.float64)
    same = np.r_[False, ii[1:] == ii[:-1]] & (ii >= 0)
    gap = np.where(same, np.r_[0.0, tt[1:] - tt[:-1]], 0.0)
    g = np.maximum(ii, 0)
    gap = gap * scale[g] + np.where(same, np.abs(rng.normal(0.0, 1.0, len(gap))) * sigma[g], 0)
    starts = ~same
    new_t = np.cumsum(gap)
    grp = np.cumsum(starts) - 1
    base = new_t[np.flatnonzero(starts)][grp]
    ts = np.empty(len(inst), dtype=np.int64)
    ts[order] = np.floor(new_t - base).astype(np.int64)
    paylen = ps.paylen
    if cfg.size_shift:  # the channel's packet size is a tool setting: shift it per instance
        off = rng.integers(0, cfg.size_shift + 1, n_inst)
        paylen = np.where((paylen > 0) & (inst >= 0), paylen + off[np.maximum(inst, 0)], paylen)
    return side_features(inst, ts, paylen)


def train_model(
    ps: PacketSet, cfg: TrainConfig, clock: Clock | None = None, model: nn.Module | None = None
) -> Any:
    """Train a NetNN (or the given model, e.g. the binarized one) on `ps`; eval mode."""
    clock = clock or MonotonicClock()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(cfg.seed)
    rows = capped_indices(ps.flow, cfg.cap_per_flow, rng)
    xs = byte_view(ps, cfg)[rows].astype(np.float32)
    x = torch.from_numpy(xs)
    iat = torch.from_numpy(ps.side[rows].astype(np.int64))
    y = torch.from_numpy(np.maximum(ps.y[rows], 0))  # RETURN (pure ACKs) is taught benign
    counts = np.bincount(np.maximum(ps.y[rows], 0), minlength=2).astype(np.float64)
    weight = torch.tensor(counts.sum() / (2.0 * np.maximum(counts, 1.0)), dtype=torch.float32)
    model = model or NetNN(
        cfg.c1,
        cfg.c2,
        cfg.hidden,
        use_bytes=cfg.features != "timing",
        use_timing=cfg.features != "bytes",
        side=SIDE_OF[cfg.features],
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    start = clock.now()
    n = len(rows)
    for _epoch in range(cfg.epochs):
        if cfg.augment:
            iat = torch.from_numpy(redraw_timing(ps, cfg, rng)[rows].astype(np.int64))
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
