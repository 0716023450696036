"""Bounded training of the QAT model (and its ablations) on the training split.

Contract: `train_model(ps, cfg)` trains on the given packet set only (callers pass the train
split), at most `cfg.epochs` epochs and `cfg.max_seconds` of work, single-threaded, seeded.
Each flow contributes at most `cfg.cap_per_flow` packets (its first `FIRST_ROWS` always, the
rest a seeded sample) so the few very long covert flows do not drown the many short benign
ones; the loss is class-balanced. RETURN flows (a covert connection's pure-ACK direction) are
taught as benign: they carry no channel data, and the detector must not fire on pure ACKs.

Augmentation (`cfg.augment`, on for the committed model): every epoch re-draws, per flow
instance, what is a setting of the tool or the path rather than of the channel (`augment.py`):
the rate and path jitter of every instance; for covert instances, with `size_channel`, a
re-encoding as a payload-length channel with a random alphabet (and, half of the time,
regular timing); with `length_redraw`, another fixed message size; with `neutral` /
`alternate`, a copy without the channel (constant length / a request-response poller's
strict two-length alternation) labeled benign. The side features and the
channel bytes' length fields are recomputed. Host fingerprints need no re-drawing here: the
channel bytes do not contain them (features.FIELD_POLICY; `perturb.py` checks it).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field, model_validator
from torch import nn

from tidal.core.clock import Clock, MonotonicClock
from tidal.innet import augment
from tidal.innet.dataset import PacketSet
from tidal.innet.qmodel import NetNN

Features = Literal["both", "bytes", "timing", "channel5", "channel"]
FIRST_ROWS = 32
SIDE_OF: dict[str, tuple[bool, ...]] = {
    "both": (True,) + (False,) * 7,  # NetNN's input: bytes + the gap
    "bytes": (False,) * 8,
    "timing": (True, True, False, False, True, False, False, False),  # gaps only; no bytes
    "channel5": (True,) * 5 + (False,) * 3,  # bytes + the per-packet side features
    "channel": (True,) * 8,  # bytes + every per-flow side feature (modulation counters too)
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
        default="channel",
        description="bytes, timing, both (NetNN's input) or channel (the default)",
    )
    augment: bool = Field(default=True, description="re-draw timing per epoch (module doc)")
    rate_spread: float = Field(default=4.0, ge=1.0, le=64.0, description="max rate factor")
    jitter_us: float = Field(default=2000.0, ge=0.0, le=1e6, description="max jitter sigma")
    size_channel: float = Field(
        default=0.0, ge=0.0, le=1.0, description="covert instances re-encoded as size channels"
    )
    length_redraw: float = Field(
        default=0.0, ge=0.0, le=1.0, description="other covert instances: message size re-drawn"
    )
    gap_channel: float = Field(
        default=0.0, ge=0.0, le=1.0, description="covert instances re-encoded as gap alphabets"
    )
    block: int = Field(
        default=0, ge=0, le=100_000, description="cut instances into blocks (0: whole)"
    )
    neutral: float = Field(
        default=0.0, ge=0.0, le=1.0, description="covert instances copied without channel"
    )
    alternate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="covert instances copied as benign pollers"
    )
    preamble: int = Field(
        default=0, ge=0, le=64, description="channel-removed copies: preamble packets, at most"
    )
    max_symbols: int = Field(default=4, ge=2, le=64, description="size alphabet, at most")
    max_spacing: float = Field(
        default=64.0, ge=1.0, le=700.0, description="size symbol spacing (bytes), at most"
    )
    masked: bool = Field(default=True, description="False: train on unmasked bytes")
    legacy_mask: bool = Field(
        default=False, description="the earlier masking (features.packet_bytes), for ablations"
    )
    c1: int = Field(default=4, ge=1, le=64)
    c2: int = Field(default=8, ge=1, le=64)
    hidden: int = Field(default=16, ge=2, le=256)

    @model_validator(mode="after")
    def _modes(self) -> TrainConfig:
        if self.size_channel + self.neutral + self.gap_channel + self.alternate > 1.0:
            raise ValueError(
                "size_channel + neutral + gap_channel + alternate must be at most 1, got "
                f"{self.size_channel} + {self.neutral} + {self.gap_channel} + {self.alternate}"
            )
        return self


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
            side, xb, yb = augment.redraw(ps, cfg, rng)
            iat = torch.from_numpy(side[rows].astype(np.int64))
            y = torch.from_numpy(yb[rows])
            if xb is not ps.x:  # lengths re-drawn: the channel bytes follow
                assert cfg.masked and not cfg.legacy_mask, "size re-draws need channel bytes"
                x = torch.from_numpy(xb[rows].astype(np.float32))
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
