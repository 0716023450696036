"""A small LSTM load predictor (IPA: LSTM(25); InfAdapter: an LSTM over 1-min maxima).

Model: one LSTM layer (input 1, hidden 25) over the bucket maxima divided by a scale, then a
linear head giving the scaled target. Scale (`meta["norm"]`): "window" = the window's mean
bucket maximum + 1 (level-free: the model learns the shape of the load), or "fixed" = 400
(the trace's maximum is 388 req/s). Weights ship as package data
(`tidal/forecast/weights/lstm_<setting>.npz`: the state dict as float32 arrays plus
`meta_json`), reproduced by ``nice -n 10 tidal forecast train`` (see docs/forecast.md).
torch is imported lazily: the rest of Tidal does not pay its import time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tidal.core.clock import Clock, MonotonicClock
from tidal.core.errors import TidalError
from tidal.forecast.predictors import Setting, _Base, dataset

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SCALE = 400.0  # trace max is 388 req/s: inputs and targets land in [0, 1]
HIDDEN = 25


def _scale(x: np.ndarray, norm: str) -> np.ndarray:
    """Per-row divisor of features and target (see the module docstring)."""
    if norm == "window":
        return np.asarray(x, dtype=np.float64).mean(axis=1) + 1.0
    return np.full(len(x), SCALE)


def weights_path(setting_name: str) -> Path:
    """Where the committed weights of `setting_name` live."""
    return WEIGHTS_DIR / f"lstm_{setting_name}.npz"


def _module(hidden: int) -> Any:
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(1, hidden, batch_first=True)
            self.head = torch.nn.Linear(hidden, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.lstm(x.unsqueeze(-1))
            return self.head(out[:, -1]).squeeze(-1)

    return Net()


class LSTMPredictor(_Base):
    """LSTM over the setting's bucket maxima, loaded from `weights` (default: committed)."""

    name = "lstm"

    def __init__(self, s: Setting | str = "ipa", weights: str | Path | None = None) -> None:
        super().__init__(s)
        path = Path(weights) if weights is not None else weights_path(self.setting.name)
        if not path.is_file():
            raise TidalError(
                f"LSTM weights not found: {path}; run `tidal forecast train` to create them"
            )
        with np.load(path) as z:
            meta = json.loads(str(z["meta_json"]))
            state = {k: np.array(z[k]) for k in z.files if k != "meta_json"}
        if meta.get("setting") != self.setting.name:
            raise TidalError(
                f"LSTM weights {path} are for setting {meta.get('setting')!r}, "
                f"not {self.setting.name!r}"
            )
        import torch

        self.meta = meta
        self.net = _module(int(meta["hidden"]))
        self.net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        self.net.eval()

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            xs = np.asarray(x, dtype=np.float64)
            sc = _scale(xs, str(self.meta.get("norm", "fixed")))
            t = torch.from_numpy((xs / sc[:, None]).astype(np.float32))
            out = self.net(t).numpy().astype(np.float64) * sc
        return np.maximum(out, 0.0)


def train(
    rates: np.ndarray,
    s: Setting,
    *,
    epochs: int = 6,
    stride: int | None = None,
    batch: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    max_seconds: float = 240.0,
    norm: str = "window",
    clock: Clock | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fit the LSTM on `rates` (per second, zeros already removed) with MSE on scaled values.

    Bounded: stops after `epochs` or `max_seconds` of training, whichever first. Returns the
    state dict (float32 arrays) and metadata (setting, hidden, epochs run, final loss)."""
    import torch

    clock = clock or MonotonicClock()
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    # Decision points every `stride` s: for strides below the bucket, stack the datasets of
    # each offset within the bucket (more samples for InfAdapter's 1-min buckets).
    step = stride or s.bucket_s
    parts = [dataset(rates[off:], s, s.bucket_s) for off in range(0, s.bucket_s, step)]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    if norm not in ("window", "fixed"):
        raise TidalError(f"LSTM norm must be 'window' or 'fixed', got {norm!r}")
    sc = _scale(x, norm)
    xt = torch.from_numpy((x / sc[:, None]).astype(np.float32))
    yt = torch.from_numpy((y / sc).astype(np.float32))
    net = _module(HIDDEN)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    t0 = clock.now()
    done, loss_v = 0, float("nan")
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.75)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        total, count = 0.0, 0
        for i in range(0, len(perm), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        sched.step()
        done += 1
        loss_v = total / max(count, 1)
        if clock.now() - t0 > max_seconds:
            break
    state = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    meta = {
        "setting": s.name,
        "hidden": HIDDEN,
        "epochs": done,
        "train_samples": len(xt),
        "train_mse_scaled": loss_v,
        "seed": seed,
        "norm": norm,
    }
    return state, meta


def save(path: str | Path, state: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write weights + metadata as one .npz."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {"meta_json": np.array(json.dumps(meta, sort_keys=True)), **state}
    np.savez_compressed(p, **arrays)
